fn main() {
    println!("{}", omninode_operator::api::crds_yaml().unwrap());
}
