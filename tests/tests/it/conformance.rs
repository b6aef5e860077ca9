//! Spin's conformance suite against the bundled host: every test passes, except the ones whose
//! interface chatedge deliberately does not provide (outbound MQTT), which must be refused at
//! start with a message naming the interface. With `CHATEDGE_CONFORMANCE_SPIN=1` (and a Spin
//! binary) the same suite runs on Spin too, side by side, and the table shows both columns.

use chatedge_tests::conformance::{self, Outcome, Runtime};

/// Tests chatedge answers by refusing to start, and the interface the refusal must name.
const REFUSED: &[(&str, &str)] =
    &[("outbound-mqtt", "fermyon:spin/mqtt"), ("outbound-mqtt-no-permission", "fermyon:spin/mqtt")];

fn short(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Passed => "pass".into(),
        // The line that names what is missing, not the backtrace under it.
        Outcome::Refused(why) => {
            format!(
                "refused: {}",
                why.lines()
                    .find(|l| l.contains("fermyon:") || l.contains("spin:"))
                    .unwrap_or(why.lines().next().unwrap_or_default())
                    .trim()
            )
        }
        Outcome::Failed(why) => format!("FAIL: {why}"),
    }
}

#[tokio::test]
async fn the_bundled_host_behaves_as_spin_on_spins_own_suite() -> anyhow::Result<()> {
    let suite = conformance::suite_dir()?;
    let chatedge = Runtime::Chatedge(chatedge_tests::chatedge_bin()?);
    let spin = match std::env::var("CHATEDGE_CONFORMANCE_SPIN").is_ok_and(|v| v == "1") {
        true => chatedge_tests::spin_bin()?.map(Runtime::Spin),
        false => None,
    };
    let mut problems = Vec::new();
    let mut table = vec!["| test | Spin 4.0.2 | chatedge |".to_owned(), "|---|---|---|".to_owned()];
    for (name, dir) in conformance::tests(&suite)? {
        let ours =
            conformance::run(&chatedge, &suite, &dir).await.unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
        let theirs = match &spin {
            Some(spin) => {
                short(&conformance::run(spin, &suite, &dir).await.unwrap_or_else(|e| Outcome::Failed(format!("{e:#}"))))
            }
            None => "(not run)".into(),
        };
        table.push(format!("| {name} | {theirs} | {} |", short(&ours)));
        match (REFUSED.iter().find(|(t, _)| *t == name), &ours) {
            (None, Outcome::Passed) => {}
            (Some((_, interface)), Outcome::Refused(why))
                if why.contains(interface) && why.contains("component 'test'") => {}
            (_, other) => problems.push(format!("{name}: {}", short(other))),
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(problems.is_empty(), "conformance: {problems:#?}");
    Ok(())
}
