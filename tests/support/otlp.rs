//! A stand-in OTLP/HTTP receiver on loopback: it answers every export request with 200 and
//! keeps the bodies (protobuf), so a test can look for a trace id in what the operator exported.
//! The exporter under test is the real opentelemetry-otlp client; only the collector is ours.

#![allow(dead_code)] // shared by every test crate that declares `mod support`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// (request path, body) of every request received.
type Received = Mutex<Vec<(String, Vec<u8>)>>;

pub struct Collector {
    port: u16,
    received: Arc<Received>,
}

impl Collector {
    pub fn start() -> Result<Collector, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                std::thread::spawn(move || serve(stream, &sink));
            }
        });
        Ok(Collector { port, received })
    }

    /// The base URL to configure as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bodies posted to `/v1/traces` that contain `bytes`.
    pub fn traces_containing(&self, bytes: &[u8]) -> usize {
        self.received.lock().map_or(0, |r| {
            r.iter()
                .filter(|(path, body)| {
                    path == "/v1/traces" && body.windows(bytes.len()).any(|w| w == bytes)
                })
                .count()
        })
    }
}

/// Requests on one (keep-alive) connection until it closes.
fn serve(stream: TcpStream, sink: &Received) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(mut r) = sink.lock() {
            r.push((path, body));
        }
        let answer =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
