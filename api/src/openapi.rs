//! The OpenAPI 3.1 document of the API (`api/openapi.json`), served at `/openapi.json`.
//! It is written by hand, as the contract clients code against; the tests below hold
//! its paths and error codes equal to the routes', and `tests/api.rs` and the
//! schemathesis run (`scripts/fuzz-api.sh`) hold the answers to it.

/// The document, as served.
pub const DOCUMENT: &str = include_str!("../openapi.json");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::DOCUMENT;
    use crate::error::ErrorCode;
    use crate::route_table::ROUTES;

    fn document() -> serde_json::Value {
        serde_json::from_str(DOCUMENT).expect("api/openapi.json is JSON")
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_route_and_method_and_no_other() {
        let document = document();
        assert_eq!(document["openapi"], "3.1.0");
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, operations)| {
                operations
                    .as_object()
                    .expect("operations")
                    .keys()
                    .map(move |method| (path.clone(), method.to_uppercase()))
            })
            .collect();
        let routes: BTreeSet<(String, String)> = ROUTES
            .iter()
            .flat_map(|(path, methods)| {
                methods
                    .iter()
                    .map(move |method| (path.to_string(), method.to_string()))
            })
            .collect();
        assert_eq!(documented, routes);
    }

    #[test]
    fn the_document_lists_every_error_code_and_no_other() {
        let document = document();
        let documented: BTreeSet<&str> = document["components"]["schemas"]["Error"]["properties"]
            ["error"]["enum"]
            .as_array()
            .expect("the Error schema's codes")
            .iter()
            .filter_map(|code| code.as_str())
            .collect();
        let codes: BTreeSet<&str> = ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
        assert_eq!(documented, codes);
    }

    /// Every `$ref` names a component the document has.
    #[test]
    fn every_reference_resolves() {
        fn walk(value: &serde_json::Value, document: &serde_json::Value, refs: &mut usize) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(target) = map.get("$ref").and_then(|r| r.as_str()) {
                        let pointer = target.trim_start_matches('#');
                        assert!(document.pointer(pointer).is_some(), "{target} resolves");
                        *refs += 1;
                    }
                    map.values().for_each(|v| walk(v, document, refs));
                }
                serde_json::Value::Array(items) => {
                    items.iter().for_each(|v| walk(v, document, refs));
                }
                _ => {}
            }
        }
        let document = document();
        let mut refs = 0;
        walk(&document, &document, &mut refs);
        assert!(refs > 0);
    }
}
