//! The API against its OpenAPI document: schemathesis (from PyPI; `scripts/test.sh`
//! installs it) generates requests from `GET /openapi.json`, valid and invalid, with a
//! token and without, and checks every answer: no 5xx, and status, headers, content
//! type and body as documented. Bounded: `FEEDSTREAM_TEST_FUZZ_EXAMPLES` (30) cases per
//! operation and phase, on 127.0.0.1; `scripts/fuzz-api.sh` runs the same with many
//! more and prints the figures.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use common::{Deployment, Engines};
use feedstream_harness::token;

fn setting(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) => value.parse().with_context(|| format!("{name}={value}")),
        Err(_) => Ok(default),
    }
}

/// Answers the API gave, by status, from its `http_requests_total` series.
async fn answers_by_status(base: &str) -> anyhow::Result<BTreeMap<u16, u64>> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    let mut answers = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
    {
        let status = line
            .split("status=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|status| status.parse::<u16>().ok())
            .with_context(|| format!("no status in {line}"))?;
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|count| count.parse().ok())
            .with_context(|| format!("no count in {line}"))?;
        *answers.entry(status).or_default() += count as u64;
    }
    Ok(answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_as_its_openapi_document_says_under_fuzzing() -> anyhow::Result<()> {
    let engines = Engines::from_env();
    let st = std::env::var("FEEDSTREAM_TEST_SCHEMATHESIS").context(
        "FEEDSTREAM_TEST_SCHEMATHESIS is not set: it names schemathesis' `st`, which scripts/test.sh installs",
    )?;
    let examples = setting("FEEDSTREAM_TEST_FUZZ_EXAMPLES", 30)?;
    let deadline = Duration::from_secs(setting("FEEDSTREAM_TEST_FUZZ_SECONDS", 600)?);
    let seed = setting("FEEDSTREAM_TEST_SEED", fastrand::u64(..1 << 32))?;
    let deployment = Deployment::new(&engines).await?;
    deployment.create_topics(1).await?;
    let (_api, base) = deployment.spawn_api(&[]).await?;

    let report = deployment.dir.path().join("schemathesis");
    // Where this checkout is now (cargo sets it when it runs the test), not where the
    // binary was built: clones share one target directory.
    let config = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR")?)
        .join("deploy/schemathesis/schemathesis.toml");
    let mut fuzz = tokio::process::Command::new(&st);
    fuzz.arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--checks", "all"])
        // An endless event stream answers no request in time; tests/live.rs covers it.
        .args(["--exclude-path", "/feeds/{user_id}/stream"])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--workers", "2", "--request-timeout", "10"])
        .args(["--header", &format!("Authorization: Bearer {}", token(1)?)])
        .args(["--report", "junit", "--report-dir"])
        .arg(&report)
        .env("NO_COLOR", "1")
        // Its cache of crashes goes with the deployment.
        .current_dir(deployment.dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    println!("schemathesis {examples} examples per operation, seed {seed}, against {base}");
    let outcome = tokio::time::timeout(deadline, fuzz.output())
        .await
        .with_context(|| format!("schemathesis did not finish within {deadline:?}"))?
        .with_context(|| format!("running {st}"))?;
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&outcome.stderr));

    let answers = answers_by_status(&base).await?;
    let total: u64 = answers.values().sum();
    println!("the API answered {total} requests: {answers:?}");
    assert!(
        outcome.status.success(),
        "schemathesis found answers that break the document (seed {seed}):\n{stdout}"
    );
    let server_errors: u64 = answers
        .iter()
        .filter(|(status, _)| **status >= 500)
        .map(|(_, count)| count)
        .sum();
    assert_eq!(server_errors, 0, "{answers:?}");
    // Valid and invalid requests were both sent, with and without a token, with
    // methods a route does not take (what else is answered depends on the seed).
    for status in [200, 202, 400, 401, 405] {
        assert!(
            answers.contains_key(&status),
            "no {status} among {answers:?}"
        );
    }
    Ok(())
}
