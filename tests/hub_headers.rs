//! A hostile mirror's commit and etag headers never name files: whichever way the hub is asked for a
//! file's headers (ftexp's HEAD, hf-hub's one-byte GET, after a relative redirect), a value that is not
//! a plain name is refused before hf-hub writes anything.
use std::path::PathBuf;

use ftexp::hub::download_with;

use crate::hub::{all_files, dirs, one_line_error, settings, tiny_files, FakeHub, FakeRepo};

#[test]
fn hostile_headers_on_the_other_request_kind_are_refused() {
    let d = dirs();
    let cases = [
        ("GET", "../../../escape", "\"abc\""),
        ("GET", "0123456789abcdef0123456789abcdef01234567", "\"../../../../escape\""),
        ("redirect", "../../../escape", "\"abc\""),
        ("redirect", "0123456789abcdef0123456789abcdef01234567", "\"../../../../escape\""),
    ];
    for (when, commit, etag) in cases {
        let mut repo = FakeRepo::new("test-org/evil", &tiny_files());
        repo.hostile = Some((commit.to_string(), etag.to_string()));
        repo.hostile_when = Some(when);
        let hub = FakeHub::start(vec![repo]);
        let err =
            one_line_error(download_with(&settings(&hub.endpoint, &d.cache, None), "test-org/evil", None, &d.out));
        let culprit = if commit.contains("..") { format!("commit `{commit}`") } else { format!("etag `{etag}`") };
        assert!(err.contains(&culprit) && err.contains("refusing"), "{when}: {err}");
        // no file was fetched: only header requests reached the hub's file routes
        assert!(hub.seen().iter().all(|s| !s.transferred_body()), "{when}: {:?}", hub.seen());
    }
    let root = d.cache.parent().unwrap();
    let mut everything: Vec<PathBuf> = Vec::new();
    all_files(root, &mut everything);
    assert!(everything.iter().all(|p| !p.to_string_lossy().contains("escape")), "{everything:?}");
    let outside: Vec<_> = std::fs::read_dir(root.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("escape"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}
