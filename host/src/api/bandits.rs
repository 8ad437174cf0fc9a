//! A bandit experiment's weights as the API shows them, and the operator's controls:
//! `POST /experiments/{id}/freeze`, `/resume`, `/reset` and `/promote`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Operator;
use super::error::{ApiError, ErrorBody};
use crate::experiments::LiveExperiment;
use crate::experiments::allocation::{
    Action, ActionError, BanditState, OperatorAction, WeightsRevision, operator_action,
};
use crate::experiments::bandit::{ArmCounts, posterior_summary};

/// A bandit's weights in force, arm by arm.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BanditView {
    /// The weights revision in force (0: none stored yet; the weights are equal).
    revision: u64,
    /// When it was stored (Unix milliseconds).
    at_ms: Option<u64>,
    action: Option<Action>,
    state: BanditState,
    arms: Vec<ArmView>,
    /// The posterior probability that all arms have the same rate.
    equal_probability: f64,
    /// Whether every arm had its burn-in of users.
    burned_in: bool,
    /// The arm most likely to be the best, once burned in.
    leader: Option<Leader>,
    /// When the learner recomputes the weights next (while learning).
    next_update_at_ms: Option<u64>,
    /// The newest revisions (`?history=N`, default 1,000), oldest first (`GET /experiments/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<Vec<WeightsRevision>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ArmView {
    group: String,
    /// Share of new users now.
    weight: f64,
    /// Trials (a user in a period) and successes counted so far.
    trials: u64,
    successes: u64,
    /// The probability that this arm is the best, if the arms differ.
    best_probability: f64,
    /// The success rate's posterior, Beta(1 + successes, 1 + failures): mean and central
    /// 95% credible interval.
    posterior_mean: f64,
    posterior_low: f64,
    posterior_high: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Leader {
    group: String,
    /// Its probability of being the best, if the arms differ.
    probability: f64,
}

/// The bandit view of `experiment`, if it is a bandit (`history` for the one-experiment page).
pub fn view(
    experiment: &LiveExperiment,
    history: Option<Vec<WeightsRevision>>,
) -> Option<BanditView> {
    let definition = &experiment.definition;
    let settings = definition.bandit()?;
    let revision = experiment.weights.as_deref().filter(|r| r.fits(definition));
    let weights = experiment.weights_in_force();
    let arms: Vec<ArmView> = definition
        .groups
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let counts = revision.map(|r| r.counts[i]).unwrap_or_default();
            let summary = posterior_summary(ArmCounts::from(counts));
            ArmView {
                group: group.name.clone(),
                weight: weights[i],
                trials: counts.trials,
                successes: counts.successes,
                best_probability: revision.map_or(1.0 / definition.groups.len() as f64, |r| {
                    r.best_probability[i]
                }),
                posterior_mean: summary.mean,
                posterior_low: summary.low,
                posterior_high: summary.high,
            }
        })
        .collect();
    let burned_in = revision.is_some_and(|r| r.burned_in);
    let leader = burned_in
        .then(|| {
            arms.iter()
                .max_by(|a, b| a.best_probability.total_cmp(&b.best_probability))
                .map(|arm| Leader {
                    group: arm.group.clone(),
                    probability: arm.best_probability,
                })
        })
        .flatten();
    let state = revision.map_or(BanditState::Learning, |r| r.state);
    Some(BanditView {
        revision: experiment.weights_revision(),
        at_ms: revision.map(|r| r.at_ms),
        action: revision.map(|r| r.action),
        state,
        equal_probability: revision.map_or(settings.null_prior, |r| r.equal_probability),
        burned_in,
        leader,
        next_update_at_ms: (state == BanditState::Learning)
            .then(|| {
                revision.map(|r| {
                    r.at_ms
                        .saturating_add(settings.period_secs.saturating_mul(1000))
                })
            })
            .flatten(),
        arms,
        history,
    })
}

/// What an operator may say with an action.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Why, kept with the revision (at most 1,000 bytes).
    #[schema(max_length = 1000)]
    note: Option<String>,
    /// `promote`: the group that serves everyone from now on (required there, refused
    /// elsewhere).
    group: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ActionAnswer {
    experiment_id: String,
    /// The revision the action stored; every node serves it within about a second.
    revision: WeightsRevision,
}

fn parse_body(body: &Bytes) -> Result<ActionBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ActionBody::default());
    }
    let body: ActionBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
    if body.note.as_ref().is_some_and(|n| n.len() > 1_000) {
        return Err(ApiError::bad_request(
            "invalid_note",
            "a note has at most 1,000 bytes",
        ));
    }
    Ok(body)
}

impl From<ActionError> for ApiError {
    fn from(error: ActionError) -> Self {
        let message = error.to_string();
        match error {
            ActionError::NotABandit(_) => Self::new(StatusCode::CONFLICT, "not_a_bandit", message),
            ActionError::UnknownGroup { .. } => Self::not_found("unknown_group", message),
            ActionError::Conflict(_) => Self::new(StatusCode::CONFLICT, "bandit_state", message),
            ActionError::Store(error) => Self::internal(error),
        }
    }
}

async fn act(
    state: AppState,
    id: String,
    body: Bytes,
    action: impl FnOnce(&ActionBody) -> Result<OperatorAction, ApiError>,
) -> Result<Json<ActionAnswer>, ApiError> {
    let body = parse_body(&body)?;
    let action = action(&body)?;
    if body.group.is_some() && !matches!(action, OperatorAction::Promote(_)) {
        return Err(ApiError::bad_request(
            "unexpected_group",
            "only promote takes a group",
        ));
    }
    let experiment = state.experiments.get(&id)?;
    let (store, experiments, node) = (
        state.store.clone(),
        state.experiments.clone(),
        state.node.id.clone(),
    );
    let revision = tokio::task::spawn_blocking(move || {
        operator_action(
            &store,
            &experiments,
            &experiment.definition,
            &action,
            body.note,
            &node,
        )
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(ActionAnswer {
        experiment_id: id,
        revision,
    }))
}

/// Holds a bandit's weights where they are until `resume`, `reset` or `promote` (operator).
#[utoipa::path(post, path = "/experiments/{id}/freeze", tag = "experiments",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The experiment's id")),
    request_body(content = Option<ActionBody>, description = "Optional: a note"),
    responses(
        (status = 200, body = ActionAnswer),
        (status = 400, description = "Malformed JSON, a note over 1,000 bytes, or a group", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured on a public address, or a cross-origin request", body = ErrorBody),
        (status = 404, description = "Unknown experiment", body = ErrorBody),
        (status = 409, description = "Not a bandit, or not learning", body = ErrorBody),
    ))]
pub async fn freeze(
    _operator: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ActionAnswer>, ApiError> {
    act(state, id, body, |_| Ok(OperatorAction::Freeze)).await
}

/// Lets a frozen bandit's weights follow the evidence again (operator).
#[utoipa::path(post, path = "/experiments/{id}/resume", tag = "experiments",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The experiment's id")),
    request_body(content = Option<ActionBody>, description = "Optional: a note"),
    responses(
        (status = 200, body = ActionAnswer),
        (status = 400, description = "Malformed JSON, a note over 1,000 bytes, or a group", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured on a public address, or a cross-origin request", body = ErrorBody),
        (status = 404, description = "Unknown experiment", body = ErrorBody),
        (status = 409, description = "Not a bandit, or not frozen", body = ErrorBody),
    ))]
pub async fn resume(
    _operator: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ActionAnswer>, ApiError> {
    act(state, id, body, |_| Ok(OperatorAction::Resume)).await
}

/// Sets a bandit's weights back to equal and starts counting afresh (operator). Users keep
/// their arms.
#[utoipa::path(post, path = "/experiments/{id}/reset", tag = "experiments",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The experiment's id")),
    request_body(content = Option<ActionBody>, description = "Optional: a note"),
    responses(
        (status = 200, body = ActionAnswer),
        (status = 400, description = "Malformed JSON, a note over 1,000 bytes, or a group", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured on a public address, or a cross-origin request", body = ErrorBody),
        (status = 404, description = "Unknown experiment", body = ErrorBody),
        (status = 409, description = "Not a bandit", body = ErrorBody),
    ))]
pub async fn reset(
    _operator: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ActionAnswer>, ApiError> {
    act(state, id, body, |_| Ok(OperatorAction::Reset)).await
}

/// Ends a bandit: `group` serves every user of the experiment from now on, kept groups
/// included (operator).
#[utoipa::path(post, path = "/experiments/{id}/promote", tag = "experiments",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The experiment's id")),
    request_body = ActionBody,
    responses(
        (status = 200, body = ActionAnswer),
        (status = 400, description = "Malformed JSON, or no group", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "No admin token configured on a public address, or a cross-origin request", body = ErrorBody),
        (status = 404, description = "Unknown experiment or group", body = ErrorBody),
        (status = 409, description = "Not a bandit", body = ErrorBody),
    ))]
pub async fn promote(
    _operator: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ActionAnswer>, ApiError> {
    act(state, id, body, |body| match &body.group {
        Some(group) => Ok(OperatorAction::Promote(group.clone())),
        None => Err(ApiError::bad_request(
            "missing_group",
            "say which group to promote: {\"group\": \"NAME\"}",
        )),
    })
    .await
}
