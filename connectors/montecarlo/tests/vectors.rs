//! The golden vectors from `vectors/make_vectors.py`: Python's standard library signs each body
//! the way Monte Carlo's reference verifier does, and ours must agree byte for byte.

use lily_montecarlo::signature::{sign, signed_content, verify, SignatureError};
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = manifest_dir().join("tests/vectors/vectors.json");
    let text = std::fs::read_to_string(path).expect("vectors.json (run make_vectors.py)");
    let file: Value = serde_json::from_str(&text).unwrap();
    file["vectors"].as_array().unwrap().clone()
}

#[test]
fn every_vector_matches_python() {
    let vectors = vectors();
    assert!(vectors.len() >= 15, "too few vectors: {}", vectors.len());
    let mut signed = 0;
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let secret = v["secret"].as_str().unwrap().as_bytes();
        let body = v["payload"].as_str().unwrap().as_bytes();
        match (v["canonical"].as_str(), v["signature"].as_str()) {
            (Some(canonical), Some(signature)) => {
                assert_eq!(signed_content(body).unwrap(), canonical, "{name}");
                assert_eq!(sign(secret, body).unwrap(), signature, "{name}");
                verify(secret, body, Some(signature)).unwrap_or_else(|e| panic!("{name}: {e}"));
                let mut wrong = signature.to_string();
                wrong.replace_range(127.., if signature.ends_with('0') { "1" } else { "0" });
                assert_eq!(
                    verify(secret, body, Some(&wrong)),
                    Err(SignatureError::Mismatch),
                    "{name}"
                );
                signed += 1;
            }
            (None, None) => {
                // Python could not have signed this body, so no signature is accepted.
                let err = verify(secret, body, Some(&"0".repeat(128))).unwrap_err();
                assert!(matches!(err, SignatureError::Body(_)), "{name}: {err}");
            }
            other => panic!("{name}: inconsistent vector {other:?}"),
        }
    }
    assert!(signed >= 12, "only {signed} signed vectors");
}

#[test]
fn vectors_cover_what_the_brief_lists() {
    let all = vectors()
        .iter()
        .map(|v| v["payload"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "null", "true", "false", "49.0", "0.1", "1e-05", "1e16", "3.14159", "'", "\\\"", "\\\\",
        "é", "日本", "😀", "[]", "{}", "zeta",
    ] {
        assert!(all.contains(needle), "no vector contains {needle:?}");
    }
}

/// This package's directory, read when the test runs: a build directory shared between
/// checkouts may hold a binary compiled in another one, so the compile-time value could point
/// there.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
}
