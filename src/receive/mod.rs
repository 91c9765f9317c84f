//! Placeholder until the central store lands.
pub async fn run(
    _cfg: crate::config::ReceiverConfig,
    _shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
