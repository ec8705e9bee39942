//! The OASIS validator's test documents for the CSAF 2.0 mandatory tests (6.1.x): every
//! document the test suite marks invalid is refused naming the failed test, and every valid
//! one is read.

use broadcast_collect::feeds::csaf::parse_document;
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/csaf-validator");
const NOT_IMPLEMENTED: [&str; 0] = [];

#[test]
fn invalid_documents_are_refused_naming_the_test_and_valid_ones_are_read() {
    let cases: Value =
        serde_json::from_slice(&std::fs::read(format!("{DIR}/testcases.json")).unwrap()).unwrap();
    let (mut refused, mut read) = (0, 0);
    for t in cases["tests"].as_array().unwrap().iter().filter(|t| t["group"] == "mandatory") {
        let id = t["id"].as_str().unwrap();
        for f in t["failures"].as_array().into_iter().flatten() {
            let name = f["name"].as_str().unwrap();
            let body = std::fs::read(format!("{DIR}/{name}")).unwrap();
            match parse_document("oasis", &body) {
                Err(e) => {
                    assert!(
                        e.0.contains("CSAF mandatory test 6.1.") || e.0.contains("missing"),
                        "{name}: {e}"
                    );
                    refused += 1;
                }
                Ok(_) => assert!(NOT_IMPLEMENTED.contains(&id), "{name} (test {id}) should be refused"),
            }
        }
        for f in t["valid"].as_array().into_iter().flatten() {
            let name = f["name"].as_str().unwrap();
            let body = std::fs::read(format!("{DIR}/{name}")).unwrap();
            if let Err(e) = parse_document("oasis", &body) {
                panic!("{name} (valid for test {id}) was refused: {e}");
            }
            read += 1;
        }
    }
    // 87 invalid documents and 60 valid ones.
    assert_eq!((refused, read), (87, 60), "every case checked");
}

#[test]
fn the_reason_names_the_test_that_failed() {
    let body = std::fs::read(format!("{DIR}/mandatory/oasis_csaf_tc-csaf_2_0-2021-6-1-06-01.json")).unwrap();
    let err = parse_document("oasis", &body).unwrap_err();
    assert!(err.0.contains("CSAF mandatory test 6.1.6 failed"), "{err}");
    assert!(err.0.contains("CSAFPID-9080700"), "names the product: {err}");
}
