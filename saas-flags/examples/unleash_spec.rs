//! Runs Unleash's client specification against saas-flags.
//!
//! ```text
//! npm pack @unleash/client-specification && tar xzf unleash-client-specification-*.tgz
//! cargo run -p saas-flags --example unleash_spec -- package/specifications
//! ```
//!
//! Prints each file's results and, last, `N passed, M failed`; exits non-zero when a
//! test fails or a file cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use saas_flags::unleash::spec;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: unleash_spec <directory with the specification's JSON files>");
        return ExitCode::from(2);
    };
    let files = match spec::files(&dir) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("no specification files in {}", dir.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let (mut passed, mut failed, mut unreadable) = (0, 0, 0);
    for file in files {
        match spec::run_file(&file) {
            Ok(r) => {
                let status = if r.failures.is_empty() { "ok" } else { "FAILED" };
                println!(
                    "{:<45} {:>3} passed, {:>3} failed  {status}",
                    r.name,
                    r.passed,
                    r.failures.len()
                );
                for f in &r.failures {
                    println!("    - {f}");
                }
                passed += r.passed;
                failed += r.failures.len();
            }
            Err(e) => {
                println!("{}: unreadable: {e}", file.display());
                unreadable += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 || unreadable > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
