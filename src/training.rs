//! Training the node-type model from labelled PRD corpora (`<dir>/<type>/*.md`), used by
//! `omninode-operator train-classifier` and by the test that keeps the embedded model
//! reproducible.

use std::path::Path;

use crate::analysis::{ModelData, train};
use crate::api::NodeType;

/// Labelled documents of one corpus directory, in a stable order.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<(NodeType, String)>> {
    let mut docs = Vec::new();
    for label in NodeType::ALL {
        let sub = dir.join(label.as_str());
        if !sub.is_dir() {
            continue;
        }
        let mut files: Vec<_> = std::fs::read_dir(&sub)?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f)?;
            docs.push((label, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    Ok(docs)
}

/// Train on several corpus directories; `names` records them in the model.
pub fn train_on(dirs: &[&Path], names: Vec<String>) -> std::io::Result<ModelData> {
    let mut docs = Vec::new();
    for d in dirs {
        docs.extend(load_corpus(d)?);
    }
    Ok(train(names, &docs))
}
