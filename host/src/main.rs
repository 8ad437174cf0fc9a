//! The `recohost` command line: `serve`, `import`, `eval`, `plugin`, `healthcheck`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use recohost::app::App;
use recohost::config::Config;
use recohost::eval::split::SplitKind;
use recohost::store::Store;

#[derive(Parser)]
#[command(
    name = "recohost",
    version,
    about = "Recommendation server with WebAssembly strategy plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server. An empty data directory gets demo data and trained models.
    Serve {
        /// Config file (TOML). Default: ./recohost.toml if it exists.
        #[arg(long, env = "RECOHOST_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (SQLite database, compiled-code cache). Overrides the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// PostgreSQL to keep everything in (postgres://...) instead of SQLite. Overrides the
        /// config and RECOHOST_DATABASE_URL.
        #[arg(long)]
        database_url: Option<String>,
        /// In a cluster: `all` (serve, and stand for election as the learner) or `serve`
        /// (serve only). Overrides the config and RECOHOST_ROLE.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// Address to listen on, e.g. 127.0.0.1:8080. Overrides the config.
        #[arg(long)]
        bind: Option<String>,
        /// Experiments directory (one TOML file per experiment, watched for changes).
        /// Overrides the config; default: ./experiments if it exists.
        #[arg(long)]
        experiments: Option<PathBuf>,
    },
    /// Import a dataset into the data directory's database.
    Import {
        /// Dataset format.
        #[arg(long, value_enum)]
        format: Format,
        /// Folder holding the dataset files.
        path: PathBuf,
        /// Config file (TOML), for the data directory. Default: ./recohost.toml if it exists.
        #[arg(long, env = "RECOHOST_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory. Overrides the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// PostgreSQL to import into (postgres://...). Overrides the config.
        #[arg(long)]
        database_url: Option<String>,
        /// Import only this oldest share of the events, by timestamp (0 < F ≤ 1): e.g. 0.8
        /// to train on the past and replay the rest through `POST /events` later.
        #[arg(long, value_parser = fraction)]
        oldest: Option<f64>,
    },
    /// Write a generated dataset in MovieLens's ml-latest format (movies.csv, ratings.csv):
    /// the demo's taste clusters, titles and genres at any size, deterministic for a seed.
    /// Ratings only, and users' activity long-tailed as in MovieLens (at least 20 each):
    /// shape s has the demo's size, not its very events. Import it with
    /// `recohost import --format movielens DIR`.
    DemoData {
        /// A named shape: s (the demo: 2,000 users, 1,200 items, ~85k events), m (10x) or
        /// l (MovieLens 25M's size: 162,541 users, 62,423 items, ~25M events).
        #[arg(long, value_parser = shape, conflicts_with_all = ["users", "items", "events"])]
        shape: Option<recohost::import::demo::Shape>,
        #[arg(long, requires_all = ["items", "events"])]
        users: Option<u32>,
        #[arg(long, requires_all = ["users", "events"])]
        items: Option<u32>,
        /// About this many events (each user's count is drawn around events / users).
        #[arg(long, requires_all = ["users", "items"])]
        events: Option<u64>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Folder to write movies.csv and ratings.csv into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Copy the data directory's SQLite database into an empty PostgreSQL database (every
    /// table, ids and all, in one transaction; row counts verified), for a move to
    /// `database_url`. Stop the server first.
    Migrate {
        /// The PostgreSQL database to fill (postgres://...); it must be empty.
        #[arg(long)]
        to: String,
        /// Config file (TOML), for the data directory. Default: ./recohost.toml if it exists.
        #[arg(long, env = "RECOHOST_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory holding recohost.db. Overrides the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Cluster experiments: publish a folder of experiment files to every node.
    Experiments {
        #[command(subcommand)]
        command: ExperimentsCommand,
    },
    /// Evaluate the declared plugins offline: P@k, R@k, NDCG@k, MAP@k and training time.
    Eval(EvalArgs),
    /// Tools for plugin authors: generate a plugin crate, check a built plugin.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Exit 0 when the server answers `GET /health` with 200 (for container health checks;
    /// images need no curl).
    Healthcheck {
        /// Default: the port of RECOHOST_BIND on 127.0.0.1, else 8080.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum ExperimentsCommand {
    /// Validate every NAME.toml of DIR against the config's plugins and publish them as the
    /// cluster's new experiment revision (all nodes switch within about a second). Invalid
    /// files: nothing is published.
    Apply {
        /// Folder of experiment files.
        dir: PathBuf,
        /// Config file (TOML): the plugins the groups may name, and database_url.
        #[arg(long, env = "RECOHOST_CONFIG")]
        config: Option<PathBuf>,
        /// The cluster's PostgreSQL (postgres://...). Overrides the config.
        #[arg(long)]
        database_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Generate a plugin project in ./NAME that builds and passes its tests at once: the
    /// algorithm in a plain module (src/model.rs, src/model.py, src/model.js) with its own
    /// tests, a thin binding to the WIT contract, and one command that builds NAME.wasm.
    New {
        /// The plugin's name: lower-case letters, digits, '-' and '_'.
        name: String,
        /// The plugin's language: rust (cargo), python (componentize-py) or js
        /// (componentize-js).
        #[arg(long, value_enum, default_value = "rust")]
        lang: recohost::plugin_dev::new::Lang,
        /// Folder to create the project in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Publish a plugin to every node of a cluster: FILE is loaded against the cluster's
    /// catalog and trained on its events here (the model is stored for the nodes to
    /// restore), then stored in PostgreSQL as a new plugin revision; every node runs it
    /// within seconds, no restart, no shared files. A plugin that fails: nothing published.
    Push {
        /// The component, e.g. target/wasm32-wasip2/release/NAME.wasm.
        file: PathBuf,
        /// The name requests and experiments use (replaces a plugin of that name).
        #[arg(long)]
        name: String,
        /// Its config as a JSON object (default: what it was published with before, else
        /// the config file's `[plugins.config]` for that name, else `{}`).
        #[arg(long)]
        plugin_config: Option<String>,
        /// Its limits as JSON with keys of `[plugins.limits]` (default: as before, else the
        /// config file's, else the defaults).
        #[arg(long)]
        limits: Option<String>,
        /// Server config file (TOML): database_url, `[learning]` and the declared plugins.
        #[arg(long, env = "RECOHOST_CONFIG")]
        config: Option<PathBuf>,
        /// The cluster's PostgreSQL (postgres://...). Overrides the config.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Run a built plugin through everything the server asks of it, on a generated dataset
    /// under the production limits; exit 1 with the reason if it breaks the contract.
    Check {
        /// The component, e.g. target/wasm32-wasip2/release/NAME.wasm.
        file: PathBuf,
        /// The plugin's config as JSON (what `[plugins.config]` would hold).
        #[arg(long, default_value = "{}")]
        config: String,
        /// Limits to check under, as JSON with the keys of `[plugins.limits]` (e.g.
        /// '{"memory_mb": 64}'); the rest keep the server's defaults.
        #[arg(long, default_value = "{}")]
        limits: String,
        /// The data to check on: small (seconds) or demo (the server's demo data, for
        /// figures that say what the plugin costs there).
        #[arg(long, value_enum, default_value = "small")]
        dataset: recohost::plugin_dev::check::CheckDataset,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["train", "dataset"]))]
struct EvalArgs {
    /// Config file declaring the plugins to evaluate. Default: ./recohost.toml.
    #[arg(long, env = "RECOHOST_CONFIG")]
    config: Option<PathBuf>,
    /// Training ratings (u.data format: user, item, rating, timestamp). With --split, the one
    /// ratings file to split.
    #[arg(long, alias = "ratings", group = "source")]
    train: Option<PathBuf>,
    /// A MovieLens folder to split instead (ml-100k, or ml-latest's ratings.csv and
    /// movies.csv, as `recohost import` and `recohost demo-data` read and write them); its
    /// items are the catalog.
    #[arg(long, group = "source", conflicts_with_all = ["test", "items"])]
    dataset: Option<PathBuf>,
    /// Score at most this many test users, spread evenly (all by default).
    #[arg(long, conflicts_with = "prequential", value_parser = clap::value_parser!(u64).range(1..))]
    max_users: Option<u64>,
    /// Test ratings, same format.
    #[arg(long, conflicts_with = "split")]
    test: Option<PathBuf>,
    /// Split the --train file instead of reading --test.
    #[arg(long, value_enum)]
    split: Option<SplitKind>,
    /// Seed of the random split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of the ratings that --split puts in the test set.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Item catalog in u.item format (titles and genres, for content-based plugins).
    #[arg(long)]
    items: Option<PathBuf>,
    /// Length of the ranked lists.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Print one JSON object keyed by plugin name instead of a table.
    #[arg(long)]
    json: bool,
    /// Evaluate only these plugins (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    plugins: Vec<String>,
    /// A plugin's .wasm to evaluate beside the declared ones, with an empty config:
    /// NAME=PATH, or PATH to name it after the file. Repeatable.
    #[arg(long = "wasm", value_name = "[NAME=]PATH")]
    wasm: Vec<String>,
    /// Print CSV (one row per plugin) instead of a table (not with --prequential, whose
    /// --json holds the per-tenth figures too).
    #[arg(long, conflicts_with_all = ["json", "prequential"])]
    csv: bool,
    /// Also write an SVG plot: NDCG, recall and precision against k (1 to --k) for every
    /// plugin; with --prequential, recall (and RMSE) per tenth of the replay, online against
    /// frozen.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Prequential replay instead: train on the oldest ratings, then replay the newest
    /// --test-fraction in time order, scoring each event before learning it (online) and
    /// beside a model that never learns (frozen).
    #[arg(long, conflicts_with_all = ["test", "split"])]
    prequential: bool,
    /// Events per model update in the prequential replay.
    #[arg(long, default_value_t = 1, requires = "prequential")]
    batch: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// MovieLens: ml-100k (u.data, u.item) or ml-latest (ratings.csv, movies.csv).
    Movielens,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    All,
    Serve,
}

fn load_config(
    path: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(path) => Config::load(&path)?,
        None if std::path::Path::new("recohost.toml").exists() => {
            Config::load(std::path::Path::new("recohost.toml"))?
        }
        None => {
            let mut config = Config::default();
            config.apply_env(|key| std::env::var(key).ok())?;
            config
        }
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Some(url) = database_url {
        config.database_url = Some(url);
    }
    config.validate()?;
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RECOHOST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            config,
            data_dir,
            database_url,
            role,
            bind,
            experiments,
        } => {
            let mut config = load_config(config, data_dir, database_url)?;
            match role {
                Some(RoleArg::All) => config.cluster.role = recohost::cluster::Role::All,
                Some(RoleArg::Serve) => config.cluster.role = recohost::cluster::Role::Serve,
                None => {}
            }
            if let Some(bind) = bind {
                config.bind = bind;
            }
            if experiments.is_some() {
                config.experiments_dir = experiments;
            } else if config.experiments_dir.is_none()
                && std::path::Path::new("experiments").is_dir()
            {
                config.experiments_dir = Some(PathBuf::from("experiments"));
            }
            if config.plugins.is_empty() {
                anyhow::bail!(
                    "no plugins are declared: pass --config FILE (see recohost.toml in the repository)"
                );
            }
            serve(config)
        }
        Command::Eval(args) => eval(args),
        Command::Plugin {
            command: PluginCommand::New { name, lang, dir },
        } => {
            let root = recohost::plugin_dev::new::create(&name, lang, &dir)?;
            let (build, component) = lang.next_steps(&root, &name);
            println!("created the plugin project {}", root.display());
            println!("next: {build}");
            println!("then: recohost plugin check {}", component.display());
            Ok(())
        }
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    config,
                    limits,
                    dataset,
                    json,
                },
        } => {
            if let Err(error) =
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&config)
            {
                anyhow::bail!("--config must be a JSON object: {error}");
            }
            let limits: recohost::plugins::PluginLimits =
                serde_json::from_str(&limits).map_err(|e| anyhow::anyhow!("--limits: {e}"))?;
            let report = recohost::plugin_dev::check::check(&file, &config, limits, dataset);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", recohost::plugin_dev::check::render(&report));
            }
            if !report.passed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Plugin {
            command:
                PluginCommand::Push {
                    file,
                    name,
                    plugin_config,
                    limits,
                    config,
                    database_url,
                },
        } => push_plugin(
            &file,
            &name,
            plugin_config.as_deref(),
            limits.as_deref(),
            load_config(config, None, database_url)?,
        ),
        Command::Healthcheck { url } => healthcheck(url),
        Command::DemoData {
            shape,
            users,
            items,
            events,
            seed,
            out,
        } => {
            let shape = match (shape, users, items, events) {
                (Some(shape), ..) => shape,
                (None, Some(users), Some(items), Some(events)) => recohost::import::demo::Shape {
                    users,
                    items,
                    events,
                    seed,
                },
                _ => anyhow::bail!("give --shape s|m|l, or --users, --items and --events"),
            };
            let shape = recohost::import::demo::Shape { seed, ..shape };
            let started = std::time::Instant::now();
            let written = recohost::import::demo::write_movielens(&shape, &out, true)?;
            println!(
                "wrote {} items, {} users and {} events to {} in {:.1} s",
                written.items,
                written.users,
                written.events,
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Experiments {
            command:
                ExperimentsCommand::Apply {
                    dir,
                    config,
                    database_url,
                },
        } => publish_experiments(&dir, load_config(config, None, database_url)?),
        Command::Migrate {
            to,
            config,
            data_dir,
        } => migrate(&to, load_config(config, data_dir, None)?),
        Command::Import {
            format: Format::Movielens,
            path,
            config,
            data_dir,
            database_url,
            oldest,
        } => {
            let config = load_config(config, data_dir, database_url)?;
            std::fs::create_dir_all(&config.data_dir)?;
            let started = std::time::Instant::now();
            let dataset = recohost::import::movielens::open(&path, true)?;
            let store = Store::connect(&config.database())?;
            let items = dataset.items.len();
            let added = match oldest {
                // The oldest share needs every event's time first: read whole, then sorted.
                Some(share) => {
                    let mut events = dataset
                        .events
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(anyhow::Error::msg)?;
                    // Stable: events of the same second keep their order in the file.
                    events.sort_by_key(|e| e.timestamp);
                    let keep = (events.len() as f64 * share).floor() as usize;
                    events.truncate(keep);
                    store.import_stream(&dataset.items, &mut events.into_iter().map(Ok))
                }
                // Streamed: memory holds the items, the users' indices and a chunk of events.
                None => store.import_stream(&dataset.items, &mut { dataset.events }),
            }
            .context("import failed; nothing was written")?;
            let counts = store.counts()?;
            println!(
                "imported {} items and {added} events in {:.1} s; the database now holds {} items, {} users, {} events",
                items,
                started.elapsed().as_secs_f64(),
                counts.items,
                counts.users,
                counts.events
            );
            println!(
                "a server running on this data directory takes the new users and events in within a second (events for new items wait for its next start); models are retrained at the next start if the catalog changed"
            );
            Ok(())
        }
    }
}

/// `s`, `m` or `l`.
fn shape(text: &str) -> Result<recohost::import::demo::Shape, String> {
    recohost::import::demo::Shape::named(text)
        .ok_or_else(|| format!("{text:?} is not a shape: s, m or l"))
}

/// A share in (0, 1].
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 1.0 => Ok(value),
        _ => Err(format!("{text:?} is not a share in (0, 1]")),
    }
}

/// A data set's folder and file (`ml-100k/u.data`), for plot titles.
fn short_path(path: &std::path::Path) -> PathBuf {
    let components: Vec<_> = path.components().collect();
    components[components.len().saturating_sub(2)..]
        .iter()
        .collect()
}

/// `--wasm [NAME=]PATH` as a plugin declaration with an empty config and default limits.
fn external_plugin(spec: &str) -> anyhow::Result<recohost::config::PluginDeclaration> {
    let (name, path) = match spec.split_once('=') {
        Some((name, path)) => (name.to_string(), PathBuf::from(path)),
        None => {
            let path = PathBuf::from(spec);
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .ok_or_else(|| anyhow::anyhow!("--wasm {spec:?}: no file name"))?;
            (name, path)
        }
    };
    if name.is_empty() || !path.is_file() {
        anyhow::bail!("--wasm {spec:?}: give NAME=PATH or PATH of an existing .wasm file");
    }
    Ok(recohost::config::PluginDeclaration {
        name,
        path,
        config: Default::default(),
        limits: Default::default(),
        auto_rollback: false,
        published_revision: None,
    })
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.config, None, None)?;
    for spec in &args.wasm {
        let plugin = external_plugin(spec)?;
        if config.plugins.iter().any(|p| p.name == plugin.name) {
            anyhow::bail!(
                "--wasm {spec:?}: a plugin named {:?} is already declared; use NAME=PATH",
                plugin.name
            );
        }
        config.plugins.push(plugin);
    }
    if config.plugins.is_empty() {
        anyhow::bail!(
            "no plugins to evaluate: pass --config FILE (see recohost.toml in the repository) or --wasm PATH"
        );
    }
    if args.k == 0 {
        anyhow::bail!("--k must be at least 1");
    }
    if !(0.0..1.0).contains(&args.test_fraction) || args.test_fraction == 0.0 {
        anyhow::bail!("--test-fraction must be between 0 and 1");
    }
    let (ratings, items, source) = match (&args.dataset, &args.train) {
        (Some(folder), _) => {
            let dataset = recohost::import::movielens::read(folder, true)?;
            (dataset.events, dataset.items, folder.clone())
        }
        (None, Some(train)) => {
            let items = match &args.items {
                Some(path) => recohost::import::movielens::read_100k_items(path)?,
                None => Vec::new(),
            };
            let ratings = recohost::import::movielens::read_ratings(train, true)?;
            (ratings, items, train.clone())
        }
        (None, None) => anyhow::bail!("give --ratings FILE or --dataset DIR"),
    };

    if args.prequential {
        if args.batch == 0 {
            anyhow::bail!("--batch must be at least 1");
        }
        let options = recohost::eval::prequential::PrequentialOptions {
            k: args.k,
            replay_fraction: args.test_fraction,
            batch: args.batch,
            plugins: args.plugins,
            rating_scale: (config.events.rating_min, config.events.rating_max),
            progress: true,
        };
        let scores = recohost::eval::prequential::run(&config, items, ratings, &options)?;
        if let Some(path) = &args.plot {
            let title = format!(
                "{}, prequential replay of the newest {:.0}% (updates every {} events)",
                short_path(&source).display(),
                args.test_fraction * 100.0,
                args.batch
            );
            recohost::eval::plot::write_prequential(&scores, args.k, &title, path)?;
            eprintln!("wrote {}", path.display());
        }
        if args.json {
            let keyed: serde_json::Map<String, serde_json::Value> = scores
                .iter()
                .map(|s| Ok((s.plugin.clone(), serde_json::to_value(s)?)))
                .collect::<Result<_, serde_json::Error>>()?;
            println!("{}", serde_json::to_string_pretty(&keyed)?);
        } else {
            print!("{}", recohost::eval::prequential::table(&scores, args.k));
        }
        return Ok(());
    }
    let (train, test) = match (args.test, args.split) {
        (Some(test), None) => (
            ratings,
            recohost::import::movielens::read_ratings(&test, true)?,
        ),
        (None, Some(kind)) => {
            recohost::eval::split::split(ratings, kind, args.test_fraction, args.seed)
        }
        _ => anyhow::bail!("give either --test FILE or --split random|temporal|per-user"),
    };
    let options = recohost::eval::EvalOptions {
        k: args.k,
        plugins: args.plugins,
        progress: true,
        rating_scale: (config.events.rating_min, config.events.rating_max),
        max_users: args
            .max_users
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let data = recohost::eval::EvalData { items, train, test };
    let scores = recohost::eval::run(&config, data, &options)?;
    if let Some(path) = &args.plot {
        let split = match args.split {
            Some(kind) => format!(
                "{} split (seed {})",
                kind.to_possible_value()
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default(),
                args.seed
            ),
            None => "given test file".to_string(),
        };
        let title = format!("{}, {split}", short_path(&source).display());
        recohost::eval::plot::write_metric_vs_k(&scores, &title, path)?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&recohost::eval::json(&scores, args.k))?
        );
    } else if args.csv {
        print!("{}", recohost::eval::csv(&scores, args.k));
    } else {
        print!("{}", recohost::eval::table(&scores, args.k));
    }
    Ok(())
}

/// `GET /health` over plain HTTP/1.0 with a short timeout.
fn healthcheck(url: Option<String>) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let address = match url {
        Some(url) => url
            .trim_start_matches("http://")
            .trim_end_matches("/health")
            .trim_end_matches('/')
            .to_string(),
        None => {
            let port = std::env::var("RECOHOST_BIND")
                .ok()
                .and_then(|bind| bind.rsplit(':').next().map(str::to_string))
                .unwrap_or_else(|| "8080".into());
            format!("127.0.0.1:{port}")
        }
    };
    let timeout = std::time::Duration::from_secs(2);
    let socket = std::net::ToSocketAddrs::to_socket_addrs(&address)?
        .next()
        .with_context(|| format!("cannot resolve {address}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, timeout)
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET /health HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        anyhow::bail!("unhealthy: {status}")
    }
}

/// Ctrl-C or SIGTERM (what `docker stop` and systemd send).
/// Ends the process `limit` from now if it has not ended by then: a stop that hangs (a
/// request that never finishes, a database that does not answer) must not keep an
/// orchestrator waiting past its own grace period.
fn exit_after(limit: std::time::Duration) {
    let _ = std::thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(
                seconds = limit.as_secs_f64(),
                "the stop took longer than [shutdown] drain_ms + grace_secs; exiting now"
            );
            std::process::exit(1);
        });
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

fn serve(config: Config) -> anyhow::Result<()> {
    let bind = config.bind.clone();
    let app = Arc::new(App::open(config)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .with_context(|| format!("cannot listen on {bind}"))?;
        let address = listener.local_addr()?;
        tokio::spawn(app.learning.clone().run_scheduler());
        tokio::spawn(recohost::timeline::run_sampler(app.clone()));
        // Before saying so: a file changed right after the line below must be noticed.
        recohost::reload::watch(&app)?;
        tracing::info!(%address, "recohost is listening");
        // Tests and scripts read this line to find the port when binding to port 0.
        println!("recohost listening on http://{address}");
        let drain = std::time::Duration::from_millis(app.config.shutdown.drain_ms);
        let grace = std::time::Duration::from_secs(app.config.shutdown.grace_secs);
        let draining = app.clone();
        axum::serve(listener, recohost::api::router(app.clone()))
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                // Out of rotation first (/health/ready answers 503), then, after the drain,
                // no new connections; the requests in flight finish.
                draining
                    .draining
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                exit_after(drain + grace);
                tokio::time::sleep(drain).await;
            })
            .await?;
        // A clean stop lets the running learning job end, then stores every model, so the
        // next start has nothing to catch up on.
        let learning = app.learning.clone();
        tokio::task::spawn_blocking(move || {
            learning.stop(grace);
            learning.save_snapshots()
        })
        .await?;
        // Then, in a cluster, hand the learning over at once instead of after the lease
        // (the bandits' updates stop first: they write only while this node learns).
        let (node, store) = (app.node.clone(), app.store.clone());
        let bandits = app.clone();
        tokio::task::spawn_blocking(move || {
            bandits.bandits.stop();
            node.resign(&store)
        })
        .await?;
        let experiments = app.experiments.clone();
        let app_for_lists = app.clone();
        tokio::task::spawn_blocking(move || {
            experiments.flush();
            if let Some(served) = &app_for_lists.recommender.served {
                served.flush();
            }
        })
        .await?;
        tracing::info!("models saved; bye");
        anyhow::Ok(())
    })
}

/// `recohost migrate`: the SQLite database of `config`'s data directory into `to`.
fn migrate(to: &str, config: Config) -> anyhow::Result<()> {
    let source = config.data_dir.join("recohost.db");
    if !source.exists() {
        anyhow::bail!(
            "there is no SQLite database at {} (give the data directory with --data-dir or the config)",
            source.display()
        );
    }
    let target = recohost::store::Database::Postgres(to.to_string());
    eprintln!("copying {} into {}", source.display(), target.describe());
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows, {per_sec}, {eta} left")
            .expect("a valid template"),
    );
    let report = recohost::store::migrate::sqlite_to_postgres(
        &source,
        to,
        &mut |total| bar.set_length(total),
        &mut |rows| bar.inc(rows),
    );
    bar.finish_and_clear();
    let report = report.context("migration failed; nothing was written to PostgreSQL")?;
    for (table, rows) in &report {
        println!("{table:>20}: {rows} rows");
    }
    // The target's description, not `to`: the URL may carry a password, and this output
    // ends up in terminals, CI logs and a Job's log.
    println!(
        "copied {} rows in {:.1} s, counts verified; serve with database_url = that of {}",
        report.iter().map(|(_, rows)| rows).sum::<u64>(),
        started.elapsed().as_secs_f64(),
        target.describe()
    );
    Ok(())
}

/// `recohost experiments apply`: `dir`'s experiment files, validated, as a new revision.
fn publish_experiments(dir: &std::path::Path, config: Config) -> anyhow::Result<()> {
    let Some(url) = config.database_url.clone() else {
        anyhow::bail!(
            "experiments are published to a cluster: give --database-url (a single node reads its experiments directory)"
        );
    };
    let plugins: Vec<String> = config.plugins.iter().map(|p| p.name.clone()).collect();
    let files = recohost::experiments::definition::dir_files(dir)?;
    let named: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(name, text)| (dir.join(name), text.clone()))
        .collect();
    let experiments = recohost::experiments::definition::load_files(&named, &plugins)
        .context("nothing was published")?;
    let store = Store::connect(&recohost::store::Database::Postgres(url))?;
    let revision = store.publish_experiments(&files, false)?.unwrap_or(0);
    println!(
        "published revision {revision}: {} experiment(s) ({}); every node puts it in force within about a second",
        experiments.len(),
        experiments
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `recohost plugin push`: `file` proven against the cluster's data, then published.
fn push_plugin(
    file: &std::path::Path,
    name: &str,
    plugin_config: Option<&str>,
    limits: Option<&str>,
    config: Config,
) -> anyhow::Result<()> {
    use recohost::plugin_set;
    let Some(url) = config.database_url.clone() else {
        anyhow::bail!(
            "plugins are published to a cluster: give --database-url (a single node runs the plugins of its config file)"
        );
    };
    let plugin_config = plugin_config
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--plugin-config must be a JSON object: {e}"))?;
    let limits = limits
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--limits: {e}"))?;
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let started = std::time::Instant::now();
    let store = Store::connect(&recohost::store::Database::Postgres(url))?;
    let newest = store
        .latest_plugins()?
        .map(|(revision, plugins)| plugin_set::PublishedSet { revision, plugins });
    let entry = plugin_set::entry(
        name,
        &wasm,
        plugin_config,
        limits,
        newest.as_ref(),
        &config.plugins,
    )
    .context("nothing was published")?;
    let catalog = recohost::catalog::Catalog::new(store.items()?);
    let declaration = plugin_set::declaration(&entry, file.to_path_buf(), None)?;
    // No compiled-code cache: this is a one-off, and the nodes keep their own.
    let engine = recohost::plugins::PluginEngine::new(None)?;
    let plugin =
        plugin_set::load_with_model(&engine, &declaration, &catalog, &store, &config.learning)
            .context("nothing was published")?;
    let revision = store.publish_plugin(&entry, &wasm)?;
    println!(
        "published {name:?} ({} KiB, sha256 {}) as plugin revision {revision} in {:.1} s, with model version {}; every node runs it within seconds",
        wasm.len() / 1024,
        &entry.wasm_sha256[..12],
        started.elapsed().as_secs_f64(),
        plugin.model_version().unwrap_or(0),
    );
    Ok(())
}
