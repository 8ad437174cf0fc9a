//! Experiment definitions: one TOML file per experiment in the experiments directory.
//!
//! ```toml
//! id = "model_comparison"            # letters, digits, - and _; unique across files
//! name = "Hybrid vs Collaborative Filtering"
//! description = "..."
//! status = "running"                 # draft | running | paused | stopped
//! seed = "model_comparison"          # hashing seed; default: the id
//! coverage = 1.0                     # share of users in the experiment, 0 to 1
//! priority = 0                       # higher wins when several running experiments match
//! sticky = false                     # keep each user's first group when weights change
//! bucket_version = 1                 # sticky only: raise it to re-bucket everyone
//! [namespace]                        # optional: experiments with disjoint ranges of one
//! name = "ranking"                   # namespace never share a user
//! range = [0.0, 0.5]
//! [[groups]]
//! name = "control"
//! plugin = "collaborative"
//! weight = 0.5                       # fractions summing to 1, or relative integers
//!
//! [allocation]                       # optional: a bandit sets the weights itself
//! type = "thompson"                  # "fixed" (the groups' weights) is the default
//! metric = "click"                   # or "positive_rating" (rate >= rating_threshold),
//!                                    # "any_interaction"
//! rating_threshold = 4.0             # positive_rating only
//! period_secs = 3600                 # how often the weights are recomputed
//! burn_in_users = 100                # per arm, before the weights move from equal
//! min_weight = 0.01                  # no arm ever gets less
//! top_two = false                    # weight from P(best or second best)
//! attribution_secs = 86400           # a metric event within this after an exposure counts
//! null_prior = 0.8                   # prior probability that the arms are equal (0: pure
//!                                    # Thompson sampling, as GrowthBook)
//! ```
//!
//! A bandit needs `sticky = true` (users keep their arm when the weights move) and no
//! `weight` on its groups (it starts them equal).
//!
//! Every problem is reported with the file, the field and the reason; nothing half-valid is
//! ever used.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Draft,
    Running,
    Paused,
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Namespace {
    pub name: String,
    pub start: f64,
    pub end: f64,
}

/// How traffic is split between the groups.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Allocation {
    /// By the groups' weights, as written.
    Fixed,
    /// By weights a bandit recomputes each period from the evidence ([`super::bandit`]).
    Thompson(BanditSettings),
}

/// What counts as a success of a bandit's trial.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metric {
    /// A `click` event.
    Click,
    /// A `rate` event with a value of at least `threshold`.
    PositiveRating { threshold: f32 },
    /// Any event (rate, click, view, purchase).
    AnyInteraction,
}

/// A Thompson-sampling bandit's settings (see the module doc for their meaning).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BanditSettings {
    pub metric: Metric,
    pub period_secs: u64,
    pub burn_in_users: u64,
    pub min_weight: f64,
    pub top_two: bool,
    pub attribution_secs: u64,
    pub null_prior: f64,
}

impl Default for BanditSettings {
    fn default() -> Self {
        Self {
            metric: Metric::Click,
            period_secs: 3600,
            burn_in_users: 100,
            min_weight: 0.01,
            top_two: false,
            attribution_secs: 86_400,
            null_prior: 0.8,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    pub name: String,
    pub plugin: String,
    /// Normalized: the weights of an experiment sum to 1.
    pub weight: f64,
}

/// A validated experiment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Experiment {
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: Status,
    pub seed: String,
    pub coverage: f64,
    pub priority: i64,
    pub namespace: Option<Namespace>,
    /// Sticky assignment: a user keeps the group first served to them (stored in SQLite)
    /// while `bucket_version` stays the same, even when weights or coverage change.
    pub sticky: bool,
    pub bucket_version: u32,
    pub groups: Vec<Group>,
    pub allocation: Allocation,
    /// The file it came from.
    #[serde(skip)]
    pub path: PathBuf,
}

impl Experiment {
    /// The index of the group called `name`.
    pub fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// The bandit's settings, if the weights are a bandit's.
    pub fn bandit(&self) -> Option<&BanditSettings> {
        match &self.allocation {
            Allocation::Thompson(settings) => Some(settings),
            Allocation::Fixed => None,
        }
    }

    /// The groups' names, in order.
    pub fn group_names(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.name.clone()).collect()
    }
}

#[derive(Debug, Error, PartialEq)]
#[error("{path}: {field}: {reason}")]
pub struct DefinitionError {
    pub path: String,
    pub field: String,
    pub reason: String,
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    status: Status,
    seed: Option<String>,
    coverage: Option<f64>,
    #[serde(default)]
    priority: i64,
    namespace: Option<RawNamespace>,
    #[serde(default)]
    sticky: bool,
    bucket_version: Option<u32>,
    groups: Vec<RawGroup>,
    allocation: Option<RawAllocation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllocation {
    #[serde(rename = "type")]
    kind: String,
    metric: Option<String>,
    rating_threshold: Option<f32>,
    period_secs: Option<u64>,
    burn_in_users: Option<u64>,
    min_weight: Option<f64>,
    top_two: Option<bool>,
    attribution_secs: Option<u64>,
    null_prior: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    name: String,
    range: [f64; 2],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    plugin: String,
    /// Required unless a bandit sets the weights.
    weight: Option<f64>,
}

fn valid_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Experiment {
    /// Parses and validates one file's text; `plugins` are the declared plugin names.
    pub fn parse(path: &Path, text: &str, plugins: &[String]) -> Result<Self, DefinitionError> {
        let fail = |field: &str, reason: String| DefinitionError {
            path: path.display().to_string(),
            field: field.to_string(),
            reason,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            fail(
                "(file)",
                e.to_string().lines().collect::<Vec<_>>().join(" "),
            )
        })?;
        if !valid_id(&raw.id) {
            return Err(fail("id", "use 1-64 letters, digits, '-' or '_'".into()));
        }
        if raw.name.trim().is_empty() {
            return Err(fail("name", "must not be empty".into()));
        }
        let coverage = raw.coverage.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&coverage) {
            return Err(fail(
                "coverage",
                format!("must be between 0 and 1, got {coverage}"),
            ));
        }
        let namespace = match raw.namespace {
            None => None,
            Some(ns) => {
                let [start, end] = ns.range;
                if !valid_id(&ns.name) {
                    return Err(fail(
                        "namespace.name",
                        "use 1-64 letters, digits, '-' or '_'".into(),
                    ));
                }
                if !(0.0 <= start && start < end && end <= 1.0) {
                    return Err(fail(
                        "namespace.range",
                        format!(
                            "must be [start, end] with 0 <= start < end <= 1, got [{start}, {end}]"
                        ),
                    ));
                }
                Some(Namespace {
                    name: ns.name,
                    start,
                    end,
                })
            }
        };
        let allocation = match raw.allocation {
            None => Allocation::Fixed,
            Some(raw_allocation) => {
                parse_allocation(raw_allocation, raw.groups.len()).map_err(|(f, r)| fail(f, r))?
            }
        };
        let bandit = matches!(allocation, Allocation::Thompson(_));
        if bandit && !raw.sticky {
            return Err(fail(
                "sticky",
                "a bandit needs sticky = true: users keep their arm when the weights move".into(),
            ));
        }
        if raw.groups.is_empty() {
            return Err(fail(
                "groups",
                "an experiment needs at least one group".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, group) in raw.groups.iter().enumerate() {
            let field = format!("groups[{i}]");
            if group.name.trim().is_empty() || !names.insert(group.name.as_str()) {
                return Err(fail(
                    &format!("{field}.name"),
                    format!("{:?} is empty or repeated", group.name),
                ));
            }
            if !plugins.contains(&group.plugin) {
                return Err(fail(
                    &format!("{field}.plugin"),
                    format!(
                        "unknown plugin {:?}; declared: {}",
                        group.plugin,
                        plugins.join(", ")
                    ),
                ));
            }
            match (group.weight, bandit) {
                (Some(_), true) => {
                    return Err(fail(
                        &format!("{field}.weight"),
                        "a bandit sets the weights itself (starting equal); leave it out".into(),
                    ));
                }
                (None, false) => {
                    return Err(fail(
                        &format!("{field}.weight"),
                        "required (or set [allocation] type = \"thompson\")".into(),
                    ));
                }
                (Some(weight), false) if !(weight.is_finite() && weight > 0.0) => {
                    return Err(fail(
                        &format!("{field}.weight"),
                        format!("must be positive, got {weight}"),
                    ));
                }
                _ => {}
            }
        }
        let bucket_version = raw.bucket_version.unwrap_or(1);
        if bucket_version == 0 {
            return Err(fail("bucket_version", "must be at least 1".into()));
        }
        if raw.bucket_version.is_some() && !raw.sticky {
            return Err(fail(
                "bucket_version",
                "only sticky experiments have a bucket version; set sticky = true".into(),
            ));
        }
        let weights: Vec<f64> = raw.groups.iter().map(|g| g.weight.unwrap_or(1.0)).collect();
        let total: f64 = weights.iter().sum();
        let integers = weights.iter().all(|w| w.fract() == 0.0);
        let fractions = (total - 1.0).abs() <= 1e-6;
        if !fractions && !integers {
            return Err(fail(
                "groups.weight",
                format!(
                    "fractions must sum to 1 (these sum to {total}); or give relative integers"
                ),
            ));
        }
        let groups = raw
            .groups
            .into_iter()
            .map(|g| Group {
                weight: g.weight.unwrap_or(1.0) / total,
                name: g.name,
                plugin: g.plugin,
            })
            .collect();
        Ok(Self {
            seed: raw.seed.unwrap_or_else(|| raw.id.clone()),
            id: raw.id,
            name: raw.name,
            description: raw.description,
            status: raw.status,
            coverage,
            priority: raw.priority,
            namespace,
            sticky: raw.sticky,
            bucket_version,
            groups,
            allocation,
            path: path.to_path_buf(),
        })
    }
}

/// The `[allocation]` table for an experiment of `arms` groups; errors as (field, reason).
fn parse_allocation(raw: RawAllocation, arms: usize) -> Result<Allocation, (&'static str, String)> {
    let defaults = BanditSettings::default();
    match raw.kind.as_str() {
        "fixed" => {
            let extra = raw.metric.is_some()
                || raw.rating_threshold.is_some()
                || raw.period_secs.is_some()
                || raw.burn_in_users.is_some()
                || raw.min_weight.is_some()
                || raw.top_two.is_some()
                || raw.attribution_secs.is_some()
                || raw.null_prior.is_some();
            if extra {
                return Err((
                    "allocation",
                    "a fixed allocation takes no bandit settings; use type = \"thompson\"".into(),
                ));
            }
            return Ok(Allocation::Fixed);
        }
        "thompson" => {}
        other => {
            return Err((
                "allocation.type",
                format!("unknown allocation {other:?}; use \"fixed\" or \"thompson\""),
            ));
        }
    }
    let metric = match raw.metric.as_deref().unwrap_or("click") {
        "click" => Metric::Click,
        "any_interaction" => Metric::AnyInteraction,
        "positive_rating" => {
            let threshold = raw.rating_threshold.unwrap_or(4.0);
            if !threshold.is_finite() {
                return Err(("allocation.rating_threshold", "must be a number".into()));
            }
            Metric::PositiveRating { threshold }
        }
        other => {
            return Err((
                "allocation.metric",
                format!(
                    "unknown metric {other:?}; use \"click\", \"positive_rating\" or \"any_interaction\""
                ),
            ));
        }
    };
    if raw.rating_threshold.is_some() && !matches!(metric, Metric::PositiveRating { .. }) {
        return Err((
            "allocation.rating_threshold",
            "only the positive_rating metric has a threshold".into(),
        ));
    }
    let period_secs = raw.period_secs.unwrap_or(defaults.period_secs);
    if period_secs == 0 {
        return Err(("allocation.period_secs", "must be at least 1".into()));
    }
    let attribution_secs = raw.attribution_secs.unwrap_or(defaults.attribution_secs);
    if attribution_secs == 0 {
        return Err(("allocation.attribution_secs", "must be at least 1".into()));
    }
    let min_weight = raw.min_weight.unwrap_or(defaults.min_weight);
    if !(min_weight.is_finite() && min_weight >= 0.0 && min_weight * (arms as f64) < 1.0) {
        return Err((
            "allocation.min_weight",
            format!(
                "must be at least 0 and below 1 / groups ({arms} groups: below {}), got {min_weight}",
                1.0 / arms.max(1) as f64
            ),
        ));
    }
    let null_prior = raw.null_prior.unwrap_or(defaults.null_prior);
    if !(0.0..1.0).contains(&null_prior) {
        return Err((
            "allocation.null_prior",
            format!("must be at least 0 and below 1, got {null_prior}"),
        ));
    }
    if arms < 2 {
        return Err(("groups", "a bandit needs at least two groups".into()));
    }
    Ok(Allocation::Thompson(BanditSettings {
        metric,
        period_secs,
        burn_in_users: raw.burn_in_users.unwrap_or(defaults.burn_in_users),
        min_weight,
        top_two: raw.top_two.unwrap_or(defaults.top_two),
        attribution_secs,
        null_prior,
    }))
}

/// Every `*.toml` file of `dir`, validated, in file-name order. Ids must be unique.
pub fn load_dir(dir: &Path, plugins: &[String]) -> Result<Vec<Experiment>, DefinitionError> {
    let files = dir_files(dir)?
        .into_iter()
        .map(|(name, text)| (dir.join(name), text))
        .collect::<Vec<_>>();
    load_files(&files, plugins)
}

/// Every `*.toml` file of `dir` as (file name, text), in file-name order, unvalidated: what
/// a cluster node publishes from its folder.
pub fn dir_files(dir: &Path) -> Result<Vec<(String, String)>, DefinitionError> {
    let fail = |path: &Path, field: &str, reason: String| DefinitionError {
        path: path.display().to_string(),
        field: field.into(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| fail(dir, "(directory)", e.to_string()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| fail(&path, "(file)", "a file name that is not UTF-8".into()))?
            .to_string();
        let text =
            std::fs::read_to_string(&path).map_err(|e| fail(&path, "(file)", e.to_string()))?;
        files.push((name, text));
    }
    Ok(files)
}

/// Experiment files given as (path or name, TOML text), validated, in the order given. Ids
/// must be unique. What [`load_dir`] does with a folder's files, and what a published
/// revision holds.
pub fn load_files(
    files: &[(PathBuf, String)],
    plugins: &[String],
) -> Result<Vec<Experiment>, DefinitionError> {
    let fail = |path: &Path, field: &str, reason: String| DefinitionError {
        path: path.display().to_string(),
        field: field.into(),
        reason,
    };
    let mut experiments: Vec<Experiment> = Vec::new();
    for (path, text) in files {
        let experiment = Experiment::parse(path, text, plugins)?;
        if let Some(other) = experiments.iter().find(|e| e.id == experiment.id) {
            return Err(fail(
                path,
                "id",
                format!(
                    "{:?} is also the id of {}",
                    experiment.id,
                    other.path.display()
                ),
            ));
        }
        experiments.push(experiment);
    }
    Ok(experiments)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn plugins() -> Vec<String> {
        vec!["collaborative".into(), "hybrid".into()]
    }

    fn parse(text: &str) -> Result<Experiment, DefinitionError> {
        Experiment::parse(Path::new("x.toml"), text, &plugins())
    }

    /// A valid two-group experiment, for tests here and in `live.rs`.
    pub(crate) const VALID: &str = r#"
        id = "model_comparison"
        name = "Hybrid vs Collaborative Filtering"
        status = "running"
        [[groups]]
        name = "control"
        plugin = "collaborative"
        weight = 0.5
        [[groups]]
        name = "treatment"
        plugin = "hybrid"
        weight = 0.5
    "#;

    #[test]
    fn the_shipped_experiment_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
        let experiments = load_dir(&path, &plugins()).unwrap();
        let comparison = experiments
            .iter()
            .find(|e| e.id == "model_comparison")
            .unwrap();
        assert_eq!(comparison.name, "Hybrid vs Collaborative Filtering");
        assert_eq!(comparison.groups[0].plugin, "collaborative");
        assert_eq!(comparison.groups[1].plugin, "hybrid");
        assert_eq!(comparison.groups[0].weight, 0.5);
    }

    #[test]
    fn the_example_bandit_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/experiments");
        let plugins = vec!["popularity".to_string(), "collaborative".to_string()];
        let experiments = load_dir(&path, &plugins).unwrap();
        let bandit = experiments
            .iter()
            .find(|e| e.id == "ranking_bandit")
            .unwrap();
        assert_eq!(bandit.bandit().unwrap().burn_in_users, 1000);
    }

    #[test]
    fn defaults_and_relative_weights() {
        let experiment = parse(VALID).unwrap();
        assert_eq!(
            (experiment.seed.as_str(), experiment.coverage),
            ("model_comparison", 1.0)
        );
        let relative =
            VALID
                .replace("weight = 0.5", "weight = 1")
                .replacen("weight = 1", "weight = 3", 1);
        let weights: Vec<f64> = parse(&relative)
            .unwrap()
            .groups
            .iter()
            .map(|g| g.weight)
            .collect();
        assert_eq!(weights, vec![0.75, 0.25]);
    }

    #[test]
    fn errors_name_the_file_field_and_reason() {
        let cases = [
            (
                VALID.replace("weight = 0.5", "weight = 0.4"),
                "groups.weight",
            ),
            (
                VALID.replacen("plugin = \"hybrid\"", "plugin = \"nope\"", 1),
                "groups[1].plugin",
            ),
            (
                VALID.replace("name = \"treatment\"", "name = \"control\""),
                "groups[1].name",
            ),
            (
                VALID.replace("id = \"model_comparison\"", "id = \"bad id\""),
                "id",
            ),
            (
                VALID.replace("status = \"running\"", "status = \"live\""),
                "(file)",
            ),
            (format!("coverage = 1.5\n{VALID}"), "coverage"),
            (
                format!("{VALID}\n[namespace]\nname = \"n\"\nrange = [0.6, 0.2]\n"),
                "namespace.range",
            ),
            (
                VALID.replace("weight = 0.5", "weight = -1"),
                "groups[0].weight",
            ),
            ("id = [".to_string(), "(file)"),
        ];
        for (text, field) in cases {
            let error = parse(&text).unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(error.to_string().starts_with("x.toml: "), "{error}");
        }
    }

    /// A two-arm Thompson bandit, for tests here and in `live.rs`.
    pub(crate) const BANDIT: &str = r#"
        id = "bandit"
        name = "Which model earns more clicks"
        status = "running"
        sticky = true
        [allocation]
        type = "thompson"
        period_secs = 60
        [[groups]]
        name = "control"
        plugin = "collaborative"
        [[groups]]
        name = "treatment"
        plugin = "hybrid"
    "#;

    #[test]
    fn a_bandit_starts_equal_with_the_documented_defaults() {
        let experiment = parse(BANDIT).unwrap();
        let settings = experiment.bandit().unwrap();
        assert_eq!(
            *settings,
            BanditSettings {
                period_secs: 60,
                ..BanditSettings::default()
            }
        );
        assert_eq!(
            experiment
                .groups
                .iter()
                .map(|g| g.weight)
                .collect::<Vec<_>>(),
            vec![0.5, 0.5]
        );
        let rating = parse(&BANDIT.replace(
            "period_secs = 60",
            "metric = \"positive_rating\"\nrating_threshold = 4.5",
        ))
        .unwrap();
        assert_eq!(
            rating.bandit().unwrap().metric,
            Metric::PositiveRating { threshold: 4.5 }
        );
        assert_eq!(parse(VALID).unwrap().allocation, Allocation::Fixed);
    }

    #[test]
    fn bandit_errors_name_the_field() {
        let with = |line: &str| BANDIT.replace("period_secs = 60", line);
        let cases = [
            (BANDIT.replace("sticky = true", ""), "sticky"),
            (with("metric = \"revenue\""), "allocation.metric"),
            (with("period_secs = 0"), "allocation.period_secs"),
            (with("attribution_secs = 0"), "allocation.attribution_secs"),
            (with("min_weight = 0.5"), "allocation.min_weight"),
            (with("min_weight = -0.1"), "allocation.min_weight"),
            (with("null_prior = 1.0"), "allocation.null_prior"),
            (
                with("rating_threshold = 4.0"),
                "allocation.rating_threshold",
            ),
            (with("type = \"epsilon\""), "(file)"),
            (
                BANDIT.replace("type = \"thompson\"", "type = \"greedy\""),
                "allocation.type",
            ),
            (
                BANDIT.replace("plugin = \"hybrid\"", "plugin = \"hybrid\"\nweight = 0.5"),
                "groups[1].weight",
            ),
            (
                VALID.replace("weight = 0.5\n        [[groups]]", "[[groups]]"),
                "groups[0].weight",
            ),
            (
                format!("{VALID}\n[allocation]\ntype = \"fixed\"\nperiod_secs = 5\n"),
                "allocation",
            ),
        ];
        for (text, field) in cases {
            let error = parse(&text).unwrap_err();
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn duplicate_ids_across_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), VALID).unwrap();
        std::fs::write(dir.path().join("b.toml"), VALID).unwrap();
        let error = load_dir(dir.path(), &plugins()).unwrap_err();
        assert_eq!(error.field, "id");
        assert!(
            error.path.ends_with("b.toml") && error.reason.contains("a.toml"),
            "{error}"
        );
    }
}
