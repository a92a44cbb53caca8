//! Unleash's client specification (npm package `@unleash/client-specification`): every
//! file must pass. The files come from `UNLEASH_SPEC_DIR`, or are fetched once with npm
//! into `target/unleash-client-specification/` (the machine reaches the npm registry).

use std::path::{Path, PathBuf};
use std::process::Command;

use saas_flags::unleash::spec;

const VERSION: &str = "6.1.0";

fn spec_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("UNLEASH_SPEC_DIR") {
        return PathBuf::from(dir);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/unleash-client-specification")
        .join(VERSION);
    let dir = root.join("package/specifications");
    if dir.join("index.json").exists() {
        return dir;
    }
    std::fs::create_dir_all(&root).unwrap();
    let out = Command::new("npm")
        .args(["pack", &format!("@unleash/client-specification@{VERSION}"), "--silent"])
        .current_dir(&root)
        .output()
        .expect("npm is needed to fetch Unleash's client specification (or set UNLEASH_SPEC_DIR)");
    assert!(
        out.status.success(),
        "npm pack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tarball = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let status = Command::new("tar")
        .args(["xzf", &tarball])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

#[test]
fn passes_every_file_of_the_unleash_client_specification() {
    let dir = spec_dir();
    let files = spec::files(&dir).unwrap();
    assert!(
        files.len() >= 20,
        "expected the whole specification in {}, found {} files",
        dir.display(),
        files.len()
    );
    let (mut passed, mut failed) = (0, Vec::new());
    for f in files {
        let r = spec::run_file(&f).unwrap();
        passed += r.passed;
        failed.extend(r.failures.into_iter().map(|m| format!("{}: {m}", r.name)));
    }
    assert!(failed.is_empty(), "{} failed:\n{}", failed.len(), failed.join("\n"));
    assert!(passed >= 250, "{passed}");
    println!("{passed} passed, 0 failed");
}
