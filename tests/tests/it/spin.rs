//! The same end-to-end flows (`chatedge_tests::flows`) on both runtimes: the bundled host and
//! the real Spin 4.0.2 (`SPIN_BIN`, else `spin` on PATH, else the team kit's
//! `../shared/bin/spin`). A function that passes one and fails the other (a parameter typed
//! differently from what the statement expects, a query that returns no rows) fails here.

use chatedge_tests::flows;
use chatedge_tests::{TestApp, TestDb};

#[tokio::test]
async fn every_route_on_the_bundled_host() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let fake = flows::fake_provider().await?;
    let env = flows::chat_env(&fake);
    let host = TestApp::spawn(&db, &flows::refs(&env)).await?;
    flows::all(&host, &db, &fake).await.map_err(|e| anyhow::anyhow!("{e:#}\nhost log:\n{}", host.log()))
}

#[tokio::test]
async fn every_route_on_real_spin() -> anyhow::Result<()> {
    let db = TestDb::start().await?;
    let fake = flows::fake_provider().await?;
    let env = flows::chat_env(&fake);
    let Some(spin) = TestApp::spawn_spin(&db, &flows::refs(&env)).await? else {
        return Ok(());
    };
    flows::all(&spin, &db, &fake).await.map_err(|e| anyhow::anyhow!("{e:#}\nspin log:\n{}", spin.log()))
}
