//! The route table: every path template and the methods it takes. Metrics label
//! requests by template, 405s list the methods, and a test holds the OpenAPI document
//! to it.

/// Every route: its path template and the methods it takes.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/posts", &["POST"]),
    ("/posts/{post_id}", &["DELETE"]),
    ("/follows", &["POST"]),
    ("/follows/{followee_id}", &["DELETE"]),
    ("/feeds/{user_id}", &["GET"]),
    ("/feeds/{user_id}/stream", &["GET"]),
    ("/health", &["GET"]),
    ("/metrics", &["GET"]),
    ("/openapi.json", &["GET"]),
];

/// The route of a path: its template and methods.
fn route(path: &str) -> Option<&'static (&'static str, &'static [&'static str])> {
    ROUTES.iter().find(|(template, _)| {
        let mut parts = template.trim_matches('/').split('/');
        let mut segments = path.trim_matches('/').split('/');
        loop {
            match (parts.next(), segments.next()) {
                (None, None) => return true,
                (Some(part), Some(segment)) if part.starts_with('{') || part == segment => {}
                _ => return false,
            }
        }
    })
}

/// The route template of a path, so metrics do not get one series per user.
pub fn route_of(path: &str) -> &'static str {
    route(path).map_or("other", |(template, _)| template)
}

/// The methods the route of `path` takes, if it is a route.
pub fn methods_of(path: &str) -> Option<&'static [&'static str]> {
    route(path).map(|(_, methods)| *methods)
}

#[cfg(test)]
mod tests {
    use super::{methods_of, route_of};

    #[test]
    fn paths_map_to_their_templates_and_unknown_ones_to_other() {
        for (path, route) in [
            ("/posts", "/posts"),
            ("/posts/123", "/posts/{post_id}"),
            ("/follows/9", "/follows/{followee_id}"),
            ("/feeds/42", "/feeds/{user_id}"),
            ("/openapi.json", "/openapi.json"),
            ("/feeds/42/stream", "/feeds/{user_id}/stream"),
            ("/feeds/42/x", "other"),
            ("/", "other"),
            ("/nothing", "other"),
        ] {
            assert_eq!(route_of(path), route, "{path}");
        }
        assert_eq!(methods_of("/posts/7"), Some(&["DELETE"][..]));
        assert_eq!(methods_of("/nothing"), None);
    }
}
