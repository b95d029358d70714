use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use feedstream_api::{ApiMetrics, ApiState};
use feedstream_sinks::{FeedCache, FeedReader, ReadMetrics, SinkMetrics, SinkSettings};
use feedstream_topology::feed::FeedRules;
use feedstream_topology::kafka::KafkaSettings;
use feedstream_topology::metrics::ProcessorMetrics;
use feedstream_topology::processor::ProcessorSettings;
use feedstream_topology::publisher::EventPublisher;
use feedstream_topology::topics::{self, TopicSpec, Topics};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::cli::{
    ApiArgs, Cli, Command, GlobalArgs, ProcessArgs, RebuildArgs, SinkArgs, TopicsCommand,
};

/// Runtimes wait this long for a broker acknowledgement before giving up on a batch
/// (and restarting from the last commit).
const RUNTIME_DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    let topics = Topics::new(&global.topic_prefix, &global.application_id);
    match cli.command {
        Command::Topics {
            command:
                TopicsCommand::Create {
                    partitions,
                    output_partitions,
                    replication,
                },
        } => create_topics(&global, &topics, partitions, output_partitions, replication).await,
        Command::Migrate => {
            let pool = feedstream_sinks::connect_postgres(&global.database_url)?;
            feedstream_sinks::migrate(&pool).await.context(
                "PostgreSQL migrations failed (is PostgreSQL running and DATABASE_URL right?)",
            )?;
            println!("migrations applied");
            Ok(())
        }
        Command::Api(args) => {
            let mut registry = Registry::with_prefix("feedstream");
            let (shutdown, _) = shutdown_signal();
            let api = prepare_api(&global, &topics, &args, &mut registry).await?;
            api.serve(Arc::new(registry), shutdown.subscribe()).await
        }
        Command::Process(args) => {
            let mut registry = Registry::with_prefix("feedstream");
            let metrics = ProcessorMetrics::register(&mut registry);
            let (shutdown, receiver) = shutdown_signal();
            serve_metrics(args.process_metrics_listen, registry, shutdown.subscribe()).await?;
            feedstream_topology::processor::run(
                processor_settings(&global, &topics, &args),
                metrics,
                receiver,
            )
            .await
            .context("processor failed")
        }
        Command::Sink(args) => {
            let mut registry = Registry::with_prefix("feedstream");
            let metrics = SinkMetrics::register(&mut registry);
            let (shutdown, receiver) = shutdown_signal();
            serve_metrics(args.sink_metrics_listen, registry, shutdown.subscribe()).await?;
            run_sink(&global, &topics, &args, metrics, receiver).await
        }
        Command::RebuildState(args) => rebuild_state(&global, &topics, &args).await,
        Command::Run(args) => {
            let mut registry = Registry::with_prefix("feedstream");
            let processor_metrics = ProcessorMetrics::register(&mut registry);
            let sink_metrics = SinkMetrics::register(&mut registry);
            let (shutdown, receiver) = shutdown_signal();
            let api = prepare_api(&global, &topics, &args.api, &mut registry).await?;
            let registry = Arc::new(registry);

            let processor = tokio::spawn(feedstream_topology::processor::run(
                processor_settings(&global, &topics, &args.process),
                processor_metrics,
                receiver.clone(),
            ));
            let sink = {
                let (global, topics, sink_args) =
                    (global.clone(), topics.clone(), args.sink.clone());
                let receiver = receiver.clone();
                tokio::spawn(async move {
                    run_sink(&global, &topics, &sink_args, sink_metrics, receiver).await
                })
            };
            let api = tokio::spawn(api.serve(registry, receiver.clone()));
            // Whichever part ends first (an error, or the shutdown signal) stops the others.
            let (mut processor, mut sink, mut api) =
                (processor.map_any(), sink.map_any(), api.map_any());
            let (first, result) = tokio::select! {
                result = &mut processor => ("processor", result),
                result = &mut sink => ("sink", result),
                result = &mut api => ("api", result),
            };
            let _ = shutdown.send(true);
            let mut results = vec![(first, result)];
            for (name, part) in [("processor", processor), ("sink", sink), ("api", api)] {
                if name != first {
                    results.push((name, part.await));
                }
            }
            let failures: Vec<String> = results
                .into_iter()
                .filter_map(|(name, result)| result.err().map(|error| format!("{name}: {error:#}")))
                .collect();
            if failures.is_empty() {
                Ok(())
            } else {
                bail!("{}", failures.join("; "))
            }
        }
    }
}

type Part = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

trait JoinPart {
    fn map_any(self) -> Part;
}

impl<E> JoinPart for tokio::task::JoinHandle<Result<(), E>>
where
    E: Into<anyhow::Error> + Send + 'static,
{
    fn map_any(self) -> Part {
        Box::pin(async move {
            match self.await {
                Ok(result) => result.map_err(Into::into),
                Err(join) => Err(anyhow::anyhow!("task panicked: {join}")),
            }
        })
    }
}

/// SIGINT or SIGTERM flips the returned channel to true.
fn shutdown_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    let (sender, receiver) = watch::channel(false);
    let trigger = sender.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match terminate.as_mut() {
                    Some(signal) => { signal.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
        tracing::info!("shutdown requested: finishing the work in hand");
        let _ = trigger.send(true);
    });
    (sender, receiver)
}

async fn wait_for_shutdown(mut receiver: watch::Receiver<bool>) {
    while !*receiver.borrow() {
        if receiver.changed().await.is_err() {
            return;
        }
    }
}

fn kafka(global: &GlobalArgs, delivery_timeout: Duration) -> KafkaSettings {
    KafkaSettings {
        brokers: global.brokers.clone(),
        delivery_timeout,
        debug: global.kafka_debug.clone(),
    }
}

async fn create_topics(
    global: &GlobalArgs,
    topics: &Topics,
    partitions: i32,
    output_partitions: Option<i32>,
    replication: i32,
) -> anyhow::Result<()> {
    if partitions < 1 || replication < 1 {
        bail!("--partitions and --replication must be at least 1");
    }
    let spec = TopicSpec {
        partitions,
        output_partitions: output_partitions.unwrap_or(partitions),
        replication,
    };
    let outcomes = topics::create_topics(&kafka(global, RUNTIME_DELIVERY_TIMEOUT), topics, spec)
        .await
        .with_context(|| format!("creating topics on the Kafka broker at {}", global.brokers))?;
    for outcome in outcomes {
        let verb = if outcome.created {
            "created"
        } else {
            "exists "
        };
        println!(
            "{verb} {} ({} partitions)",
            outcome.topic, outcome.partitions
        );
    }
    Ok(())
}

async fn rebuild_state(
    global: &GlobalArgs,
    topics: &Topics,
    args: &RebuildArgs,
) -> anyhow::Result<()> {
    use feedstream_topology::rebuild::{combined_digest, rebuild_state, RebuildSettings};
    let settings = RebuildSettings {
        kafka: kafka(global, RUNTIME_DELIVERY_TIMEOUT),
        topics: topics.clone(),
        state_dir: args.process.state_dir.clone(),
        store: args.store.name(),
        from_source: args.from_source,
    };
    let source = if args.from_source {
        "its source topic"
    } else {
        "its changelog"
    };
    eprintln!(
        "rebuilding store {} of every task from {source}",
        settings.store
    );
    let mut last_report = std::time::Instant::now();
    let tasks = rebuild_state(&settings, &mut |partition, records| {
        if last_report.elapsed() > Duration::from_secs(1) {
            eprintln!("  task {partition}: {records} records applied");
            last_report = std::time::Instant::now();
        }
    })
    .await
    .context("rebuild-state failed")?;
    for task in &tasks {
        let seconds = task.elapsed.as_secs_f64();
        println!(
            "task {:>3}  {:>9} records in {:>7.3}s ({:>9.0} records/s)  {}{}",
            task.partition,
            task.records,
            seconds,
            task.records as f64 / seconds.max(1e-6),
            task.digest,
            if task.republished > 0 {
                format!("  ({} changelog records republished)", task.republished)
            } else {
                String::new()
            },
        );
    }
    println!("store {}: {}", settings.store, combined_digest(&tasks));
    Ok(())
}

fn processor_settings(
    global: &GlobalArgs,
    topics: &Topics,
    args: &ProcessArgs,
) -> ProcessorSettings {
    ProcessorSettings {
        kafka: kafka(global, RUNTIME_DELIVERY_TIMEOUT),
        topics: topics.clone(),
        state_dir: args.state_dir.clone(),
        rules: FeedRules {
            backfill: args.backfill,
            celebrity_threshold: args.celebrity_threshold,
        },
        max_batch_records: args.process_batch_records.max(1),
        max_batch_wait: Duration::from_millis(args.process_batch_wait_ms),
        max_task_idle: Duration::from_millis(args.max_task_idle_ms),
        client_id: format!("{}-processor-{}", global.application_id, std::process::id()),
    }
}

async fn run_sink(
    global: &GlobalArgs,
    topics: &Topics,
    args: &SinkArgs,
    metrics: SinkMetrics,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pool = feedstream_sinks::connect_postgres(&global.database_url)?;
    migrate_when_available(&pool, shutdown.clone()).await?;
    let cache = FeedCache::connect(
        &global.redis_url,
        &global.redis_prefix,
        global.feed_cache_cap.max(1),
    )?;
    let settings = SinkSettings {
        kafka: kafka(global, RUNTIME_DELIVERY_TIMEOUT),
        topics: topics.clone(),
        group_id: args
            .sink_group
            .clone()
            .unwrap_or_else(|| topics.sink_group()),
        client_id: format!("{}-sink-{}", global.application_id, std::process::id()),
        database_url: global.database_url.clone(),
        max_batch_records: args.sink_batch_records.max(1),
        max_batch_wait: Duration::from_millis(args.sink_batch_wait_ms),
    };
    feedstream_sinks::run(settings, pool, cache, metrics, shutdown)
        .await
        .context("sink failed")
}

/// The sink cannot write without its tables: wait for PostgreSQL, saying so.
async fn migrate_when_available(
    pool: &sqlx::PgPool,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        match feedstream_sinks::migrate(pool).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                tracing::warn!(%error, "PostgreSQL unavailable for migrations; retrying in 2s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.changed() => bail!("stopped while waiting for PostgreSQL: {error}"),
                }
            }
        }
    }
}

struct PreparedApi {
    listener: tokio::net::TcpListener,
    state_parts: (Arc<EventPublisher>, FeedReader, ApiMetrics),
}

impl PreparedApi {
    async fn serve(
        self,
        registry: Arc<Registry>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let (publisher, reader, metrics) = self.state_parts;
        let state = ApiState {
            publisher,
            reader,
            registry,
            metrics,
        };
        feedstream_api::serve(self.listener, state, wait_for_shutdown(shutdown)).await;
        Ok(())
    }
}

/// Checks the topic layout, applies migrations where PostgreSQL answers, and binds the
/// listener, so that failures surface before anything runs.
async fn prepare_api(
    global: &GlobalArgs,
    topics: &Topics,
    args: &ApiArgs,
    registry: &mut Registry,
) -> anyhow::Result<PreparedApi> {
    let settings = kafka(global, Duration::from_millis(args.publish_timeout_ms));
    topics::verify_layout(&settings, topics, false).with_context(|| {
        format!(
            "checking the topics on the Kafka broker at {}",
            global.brokers
        )
    })?;
    let pool = feedstream_sinks::connect_postgres(&global.database_url)?;
    if let Err(error) = feedstream_sinks::migrate(&pool).await {
        tracing::warn!(%error, "PostgreSQL unavailable for migrations; feed reads answer 503 until it is back");
    }
    let cache = FeedCache::connect(
        &global.redis_url,
        &global.redis_prefix,
        global.feed_cache_cap.max(1),
    )?;
    let reader = FeedReader::new(
        pool,
        &global.database_url,
        cache,
        ReadMetrics::register(registry),
    );
    let publisher = Arc::new(EventPublisher::new(
        &settings,
        topics.clone(),
        args.node_id,
    )?);
    let metrics = ApiMetrics::register(registry);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let address = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(%address, "API listening");
    println!("feedstream API listening on http://{address}");
    println!("  try: curl -s -X POST http://{address}/posts -H 'X-User-Id: 1' -d '{{\"content\":\"hello\"}}'");
    println!("       curl -s http://{address}/feeds/1");
    Ok(PreparedApi {
        listener,
        state_parts: (publisher, reader, metrics),
    })
}

async fn serve_metrics(
    listen: Option<SocketAddr>,
    registry: Registry,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(listen) = listen else { return Ok(()) };
    use warp::Filter;
    let registry = Arc::new(registry);
    let route = warp::path!("metrics").map(move || feedstream_api::metrics_text(&registry));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("could not listen on {listen} for metrics"))?;
    tokio::spawn(
        warp::serve(route)
            .incoming(listener)
            .graceful(wait_for_shutdown(shutdown))
            .run(),
    );
    Ok(())
}
