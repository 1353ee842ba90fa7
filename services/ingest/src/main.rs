use clap::Parser;
use spool_ingest::{Application, IngestConfig};
use spool_platform::shutdown::{cancel_on_signal, CancellationToken};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = IngestConfig::parse();
    spool_platform::telemetry::init(&config.common.log_format, "info");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let app = Application::build(config, shutdown).await?;
    tracing::info!(port = app.port(), "spool-ingest listening");
    app.run().await
}
