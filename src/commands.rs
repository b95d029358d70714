use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use feedstream_api::auth::TokenKeys;
use feedstream_api::idempotency::IdempotencyStore;
use feedstream_api::live::{LiveSettings, LiveStreams};
use feedstream_api::publisher::EventPublisher;
use feedstream_api::rate_limit::RateLimits;
use feedstream_api::{ApiMetrics, ApiState};
use feedstream_core::feed::FeedRules;
use feedstream_core::retry::RetryPolicy;
use feedstream_kafka::topics::{self, TopicSpec, Topics};
use feedstream_kafka::KafkaSettings;
use feedstream_kafka::StageMetrics;
use feedstream_read::{FeedCache, FeedReader, ReadMetrics};
use feedstream_sinks::{SinkMetrics, SinkSettings};
use feedstream_topology::metrics::ProcessorMetrics;
use feedstream_topology::processor::ProcessorSettings;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::cli::{
    ApiArgs, Cli, Command, GlobalArgs, ProcessArgs, RebuildArgs, SinkArgs, TokenKeyArgs,
    TopicsCommand,
};

/// Runtimes wait this long for a broker acknowledgement before giving up on a batch
/// (and restarting from the last commit).
const RUNTIME_DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs one command. SIGTERM or SIGINT asks it to stop: long-running commands finish the
/// work in hand, flush, commit and close; if that takes longer than
/// `--shutdown-timeout-ms`, the command exits anyway with an error (what it had not
/// committed is read again at the next start).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let (shutdown, receiver) = shutdown_signal();
    let bound = Duration::from_millis(cli.global.shutdown_timeout_ms);
    tokio::select! {
        result = execute(cli, shutdown, receiver.clone()) => result,
        () = deadline_after_signal(receiver, bound) => bail!(
            "did not stop within {bound:?} of the shutdown signal (--shutdown-timeout-ms); \
             work not yet committed is processed again at the next start"
        ),
    }
}

async fn deadline_after_signal(receiver: watch::Receiver<bool>, bound: Duration) {
    wait_for_shutdown(receiver).await;
    tokio::time::sleep(bound).await;
}

/// A command's registry, with the metrics every stage shares.
fn registries() -> (Registry, StageMetrics) {
    let mut registry = Registry::default();
    let stage = StageMetrics::register(&mut registry);
    (registry, stage)
}

async fn execute(
    cli: Cli,
    shutdown: watch::Sender<bool>,
    receiver: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let global = cli.global;
    let topics = Topics::new(&global.topic_prefix, &global.application_id);
    match cli.command {
        Command::Topics {
            command:
                TopicsCommand::Create {
                    partitions,
                    output_partitions,
                    replication,
                    changelog_configs,
                },
        } => {
            let spec = TopicSpec {
                partitions,
                output_partitions: output_partitions.unwrap_or(partitions),
                replication,
                changelog_configs,
            };
            create_topics(&global, &topics, spec).await
        }
        Command::Migrate => {
            let pool = feedstream_read::connect_postgres(&global.database_url)?;
            feedstream_read::migrate(&pool).await.context(
                "PostgreSQL migrations failed (is PostgreSQL running and DATABASE_URL right?)",
            )?;
            println!("migrations applied");
            Ok(())
        }
        Command::Dlq { command } => {
            crate::dlq::run(
                &kafka(&global, RUNTIME_DELIVERY_TIMEOUT),
                &topics,
                command,
                receiver,
            )
            .await
        }
        Command::Token(args) => {
            let keys = token_keys(&args.keys)?;
            let user = feedstream_core::ids::UserId::new(args.user)
                .with_context(|| format!("--user {}", args.user))?;
            println!(
                "{}",
                keys.mint(user, std::time::SystemTime::now(), args.ttl)?
            );
            Ok(())
        }
        Command::Api(args) => {
            let (mut registry, _) = registries();
            let api = prepare_api(&global, &topics, &args, &mut registry).await?;
            api.serve(Arc::new(registry), receiver).await
        }
        Command::Process(args) => {
            let (mut registry, stage) = registries();
            let metrics = ProcessorMetrics::register(&mut registry, stage);
            serve_metrics(args.process_metrics_listen, registry, receiver.clone()).await?;
            run_processor(&global, &topics, &args, metrics, receiver).await
        }
        Command::Sink(args) => {
            let (mut registry, stage) = registries();
            let metrics = SinkMetrics::register(&mut registry, stage);
            serve_metrics(args.sink_metrics_listen, registry, receiver.clone()).await?;
            run_sink(&global, &topics, &args, metrics, receiver).await
        }
        Command::RebuildState(args) => rebuild_state(&global, &topics, &args).await,
        Command::Run(args) => {
            let (mut registry, stage) = registries();
            let processor_metrics = ProcessorMetrics::register(&mut registry, stage.clone());
            let sink_metrics = SinkMetrics::register(&mut registry, stage);
            let api = prepare_api(&global, &topics, &args.api, &mut registry).await?;
            let registry = Arc::new(registry);

            let processor = {
                let (global, topics, process_args) =
                    (global.clone(), topics.clone(), args.process.clone());
                let receiver = receiver.clone();
                tokio::spawn(async move {
                    run_processor(&global, &topics, &process_args, processor_metrics, receiver)
                        .await
                })
            };
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

/// SIGINT or SIGTERM flips the returned channel to true; a second one exits at once.
fn shutdown_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    let (sender, receiver) = watch::channel(false);
    let trigger = sender.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        next_signal(&mut terminate).await;
        tracing::info!(
            "shutdown requested: finishing the work in hand (a second signal stops at once)"
        );
        let _ = trigger.send(true);
        next_signal(&mut terminate).await;
        eprintln!(
            "feedstream: second shutdown signal; stopping without finishing the work in hand"
        );
        std::process::exit(130);
    });
    (sender, receiver)
}

/// The next SIGINT or SIGTERM.
async fn next_signal(terminate: &mut Option<tokio::signal::unix::Signal>) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

async fn wait_for_shutdown(mut receiver: watch::Receiver<bool>) {
    while !*receiver.borrow() {
        if receiver.changed().await.is_err() {
            return;
        }
    }
}

fn retry_policy(global: &GlobalArgs) -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(global.retry_initial_ms),
        multiplier: global.retry_multiplier,
        max: Duration::from_millis(global.retry_max_ms),
        max_attempts: global.max_attempts,
    }
}

fn kafka(global: &GlobalArgs, delivery_timeout: Duration) -> KafkaSettings {
    KafkaSettings {
        brokers: global.brokers.clone(),
        delivery_timeout,
        debug: global.kafka_debug.clone(),
        fetch_wait: Duration::from_millis(global.fetch_wait_max_ms),
        consumer_properties: global.consumer_properties.clone(),
    }
}

async fn create_topics(
    global: &GlobalArgs,
    topics: &Topics,
    spec: TopicSpec,
) -> anyhow::Result<()> {
    if spec.partitions < 1 || spec.output_partitions < 1 || spec.replication < 1 {
        bail!("--partitions, --output-partitions and --replication must be at least 1");
    }
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
        store: args.store,
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
        buffered_records_per_partition: args.buffered_records_per_partition.max(2),
        commit_interval: Duration::from_millis(args.commit_interval_ms),
        max_task_idle: Duration::from_millis(args.max_task_idle_ms),
        retry: retry_policy(global),
        client_id: format!("{}-processor-{}", global.application_id, std::process::id()),
        instance_id: global.instance_id.clone(),
        guarantee: args.processing_guarantee,
    }
}

async fn run_sink(
    global: &GlobalArgs,
    topics: &Topics,
    args: &SinkArgs,
    metrics: SinkMetrics,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pool = feedstream_read::connect_postgres(&global.database_url)?;
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
        instance_id: global.instance_id.clone(),
        database_url: global.database_url.clone(),
        max_batch_records: args.sink_batch_records.max(1),
        max_batch_wait: Duration::from_millis(args.sink_batch_wait_ms),
        retry: retry_policy(global),
    };
    let retry = settings.retry;
    supervised("sink", retry, &shutdown, || {
        feedstream_sinks::run(
            settings.clone(),
            pool.clone(),
            cache.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
    })
    .await
    .context("sink failed")
}

async fn run_processor(
    global: &GlobalArgs,
    topics: &Topics,
    args: &ProcessArgs,
    metrics: ProcessorMetrics,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let settings = processor_settings(global, topics, args);
    supervised("processor", settings.retry, &shutdown, || {
        feedstream_topology::processor::run(settings.clone(), metrics.clone(), shutdown.clone())
    })
    .await
    .context("processor failed")
}

/// Runs a runtime, and runs it again with backoff after a failure a restart can cure (a
/// broker or database that timed out while it started or restored): a transient outage
/// must not end the process. Returns at shutdown, or with the first permanent failure.
async fn supervised<E, F, Fut>(
    name: &str,
    policy: RetryPolicy,
    shutdown: &watch::Receiver<bool>,
    mut start: F,
) -> Result<(), E>
where
    E: feedstream_kafka::Retriable,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let mut attempt = 0;
    loop {
        let began = std::time::Instant::now();
        match start().await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_retriable() && !*shutdown.borrow() => {
                // A run that went well for a while starts the backoff over.
                if began.elapsed() > Duration::from_secs(60) {
                    attempt = 0;
                }
                attempt += 1;
                let delay = policy.delay(attempt);
                tracing::error!(%error, ?delay, "the {name} failed; starting it again");
                let mut shutdown = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// The sink cannot write without its tables: wait for PostgreSQL, saying so.
async fn migrate_when_available(
    pool: &sqlx::PgPool,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        match feedstream_read::migrate(pool).await {
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

/// The token keys of `--token-keys` or `--token-keys-file`.
fn token_keys(args: &TokenKeyArgs) -> anyhow::Result<TokenKeys> {
    let spec = match (&args.token_keys, &args.token_keys_file) {
        (Some(spec), _) => spec.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the token keys file {}", path.display()))?,
        (None, None) => bail!(
            "no token keys: set FEEDSTREAM_TOKEN_KEYS=kid:secret (or --token-keys-file FILE, \
             one kid:secret per line); `openssl rand -base64 32` makes a secret"
        ),
    };
    Ok(TokenKeys::parse(&spec)?)
}

/// Deletes idempotency keys past their retention, every 10 minutes, until shutdown.
async fn sweep_idempotency_keys(store: IdempotencyStore, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = ticks.tick() => match store.sweep().await {
                Ok(swept) => tracing::debug!(swept, "idempotency keys past retention deleted"),
                Err(error) => tracing::debug!(%error, "idempotency keys not swept; next try in 10 min"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

struct PreparedApi {
    listener: tokio::net::TcpListener,
    state_parts: (
        Arc<EventPublisher>,
        FeedReader,
        Arc<TokenKeys>,
        RateLimits,
        IdempotencyStore,
        ApiMetrics,
    ),
    live: LiveSettings,
}

impl PreparedApi {
    async fn serve(
        self,
        registry: Arc<Registry>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let (publisher, reader, tokens, limits, idempotency, metrics) = self.state_parts;
        tokio::spawn(sweep_idempotency_keys(
            idempotency.clone(),
            shutdown.clone(),
        ));
        let state = ApiState {
            publisher,
            reader,
            tokens,
            limits,
            idempotency,
            live: LiveStreams::new(self.live, shutdown.clone()),
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
    let tokens = Arc::new(token_keys(&args.keys)?);
    let limits = RateLimits::connect(
        &global.redis_url,
        &global.redis_prefix,
        args.write_rate_limit.0,
        args.read_rate_limit.0,
    )?;
    let settings = kafka(global, Duration::from_millis(args.publish_timeout_ms));
    topics::verify_layout(&settings, topics, false).with_context(|| {
        format!(
            "checking the topics on the Kafka broker at {}",
            global.brokers
        )
    })?;
    let pool = feedstream_read::connect_postgres(&global.database_url)?;
    if let Err(error) = feedstream_read::migrate(&pool).await {
        tracing::warn!(%error, "PostgreSQL unavailable for migrations; feed reads answer 503 until it is back");
    }
    // A key's lease outlasts the longest publish, so a retry never races a publish.
    let idempotency = IdempotencyStore::new(
        pool.clone(),
        Duration::from_millis(args.publish_timeout_ms) + Duration::from_secs(5),
    );
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
        args.max_pending_publishes,
    )?);
    let metrics = ApiMetrics::register(registry);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let address = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(%address, "API listening");
    println!("{}http://{address}", feedstream_api::LISTENING_ON);
    println!("  try: TOKEN=$(feedstream token --user 1)   # with the same token keys");
    println!("       curl -s -X POST http://{address}/posts -H \"Authorization: Bearer $TOKEN\" -d '{{\"content\":\"hello\"}}'");
    println!("       curl -s http://{address}/feeds/1 -H \"Authorization: Bearer $TOKEN\"");
    Ok(PreparedApi {
        listener,
        state_parts: (publisher, reader, tokens, limits, idempotency, metrics),
        live: LiveSettings {
            max_connections: args.sse_max_connections.max(1),
            max_per_user: args.sse_max_per_user.max(1),
            heartbeat: Duration::from_millis(args.sse_heartbeat_ms.max(100)),
            follows_refresh: Duration::from_millis(args.sse_follows_refresh_ms.max(100)),
        },
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
