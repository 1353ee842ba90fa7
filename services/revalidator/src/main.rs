use clap::Parser;
use spool_platform::shutdown::{cancel_on_signal, CancellationToken};
use spool_revalidator::{Application, RevalidatorConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = RevalidatorConfig::parse();
    spool_platform::telemetry::init(&config.common.log_format, "info");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let app = Application::build(config, shutdown).await?;
    tracing::info!(port = app.port(), "spool-revalidator listening");
    app.run().await
}
