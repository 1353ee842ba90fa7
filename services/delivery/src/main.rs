use clap::Parser;
use spool_delivery::{Application, DeliveryConfig};
use spool_platform::shutdown::{cancel_on_signal, CancellationToken};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = DeliveryConfig::parse();
    let telemetry =
        spool_platform::telemetry::init(&config.common.log_format, "info", "spool-delivery");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let app = Application::build(config, shutdown).await?;
    tracing::info!(port = app.port(), "spool-delivery listening");
    let result = app.run().await;
    telemetry.shutdown();
    result
}
