//! `POST /v1/apply`: bring objects to what their manifests declare.
//!
//! Two phases. First every document is parsed, planned against the
//! current state, authorized, checked against the rules that span objects
//! and decided dry by its aggregate: any problem stops the apply before
//! anything is written, and validation problems are all reported at once.
//! Then the planned commands run in dependency order (organizations, job
//! spaces, subjects, roles, policies, bindings), each against the stream
//! version the plan saw, so that of two admins applying over the same
//! version one wins and the other gets 409. Applying the same manifests
//! twice plans nothing and appends nothing.

use std::collections::{HashMap, HashSet};

use charter_commands::StreamVersion;
use charter_domain::Aggregate;
use charter_domain::ids::Scoped;
use charter_domain::manifest::{
    Manifest, ManifestError, parse_documents, plan_binding, plan_job_space, plan_organization,
    plan_role, plan_subject, plan_tool,
};
use charter_domain::organization::{OrgCommand, Organization};
use charter_domain::policy::{Policy, PolicyCommand};
use charter_domain::role::{
    BindingCommand, References, ResourceKind, Role, RoleBinding, RoleCommand,
};
use charter_domain::subject::{Subject, SubjectCommand};
use charter_domain::{ErrorClass, ErrorCode, OrgName};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use charter_domain::tool::{Tool, ToolCommand};
use charter_domain::workflow::Workflow;

use super::commands::{BindingIntent, Intent, SubjectIntent, ToolIntent};
use super::{ApiError, Caller, DeclaredTools, Gateway, Pending, Ready, Target, actor_of};

/// What to do with the manifests.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ApplyOptions {
    /// Plan and check only: report what would change, write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Go ahead even though a policy change would lock every admin out.
    #[serde(default)]
    pub force: bool,
}

/// What applying one object did (or would do).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct ApplyItem {
    pub kind: String,
    pub org: String,
    pub name: String,
    /// `created`, `updated` or `unchanged`.
    pub outcome: String,
    /// The commands it took (or would take), by type.
    pub commands: Vec<String>,
    /// The object's stream version afterwards.
    pub version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    pub dry_run: bool,
    pub items: Vec<ApplyItem>,
    /// The global position of the last event written: reads that ask for
    /// it see the whole apply.
    pub position: Option<u64>,
}

fn rank(manifest: &Manifest) -> u8 {
    match manifest {
        Manifest::Organization { .. } => 0,
        Manifest::JobSpace { .. } => 1,
        Manifest::Subject { .. } => 2,
        Manifest::Role { .. } => 3,
        Manifest::Policy { .. } => 4,
        Manifest::RoleBinding { .. } => 5,
        Manifest::Tool { .. } => 6,
        Manifest::Workflow { .. } => 7,
    }
}

/// The state a document was planned against, kept for its dry run (an
/// org's state lives in the apply's org map, shared with its job spaces).
enum Staged {
    Org,
    Subject(Subject),
    Role(Role),
    Binding(RoleBinding),
    Policy(Policy),
    Tool(Tool),
    Workflow(Workflow),
}

/// One object's plan.
struct Planned {
    document: usize,
    kind: &'static str,
    org: OrgName,
    name: String,
    /// The aggregate's stream, for the org cache.
    stream_key: String,
    existed: bool,
    readies: Vec<(String, Ready)>,
    version: StreamVersion,
}

fn invalid_manifests(errors: &[ManifestError]) -> ApiError {
    let details: Vec<Value> = errors
        .iter()
        .map(|e| json!({"document": e.document, "path": e.path, "message": e.message}))
        .collect();
    let summary: Vec<String> = errors.iter().map(ToString::to_string).collect();
    ApiError::new(
        ErrorClass::InvalidInput,
        "invalid_manifest",
        summary.join("; "),
    )
    .with_details(json!({ "errors": details }))
}

/// A domain rejection found while deciding dry, located at its document.
fn rejected(
    document: usize,
    kind: &str,
    name: &str,
    error: &(impl ErrorCode + std::fmt::Display),
) -> ApiError {
    let mut api = ApiError::from_error(error);
    api.message = format!("document {document} ({kind} `{name}`): {}", api.message);
    api.details = Some(Box::new(
        json!({"document": document, "kind": kind, "name": name, "code": error.code()}),
    ));
    api
}

/// Decides a command dry against a state, and folds its events in.
fn dry<A: Aggregate>(
    state: &mut A,
    id: &A::Id,
    command: &A::Command,
) -> Result<usize, A::Rejection> {
    let events = state.decide(id, command)?;
    for event in &events {
        state.evolve(event);
    }
    Ok(events.len())
}

/// Decides the ready commands of one aggregate dry, in order; the first
/// rejection, if any.
fn dry_all<'r, A: Aggregate>(
    state: &mut A,
    readies: &'r [(String, Ready)],
    pick: impl Fn(&'r Ready) -> Option<(&'r A::Id, &'r A::Command)>,
) -> Option<A::Rejection> {
    readies
        .iter()
        .filter_map(|(_, ready)| pick(ready))
        .find_map(|(id, command)| dry(state, id, command).err())
}

impl Gateway {
    /// Applies manifests (already split into documents).
    pub async fn apply(
        &self,
        caller: &Caller,
        documents: &[Value],
        options: ApplyOptions,
    ) -> Result<ApplyReport, ApiError> {
        let documents: Vec<Value> = documents.iter().filter(|d| !d.is_null()).cloned().collect();
        if documents.is_empty() {
            return Err(ApiError::new(
                ErrorClass::InvalidInput,
                "invalid_manifest",
                "no manifests in the request body".into(),
            ));
        }
        let manifests = parse_documents(&documents).map_err(|e| invalid_manifests(&e))?;
        let mut order: Vec<(usize, Manifest)> = manifests.into_iter().enumerate().collect();
        order.sort_by_key(|(_, m)| rank(m));
        let mut seen = HashSet::new();
        let duplicates: Vec<ManifestError> = order
            .iter()
            .filter(|(_, m)| !seen.insert((m.kind(), m.org().cloned(), m.name().to_owned())))
            .map(|(document, m)| ManifestError {
                document: *document,
                path: "metadata.name".into(),
                message: format!("{} `{}` is declared twice", m.kind(), m.name()),
            })
            .collect();
        if !duplicates.is_empty() {
            return Err(invalid_manifests(&duplicates));
        }

        // Phase 1: plan, authorize, check, decide dry.
        let mut pending = Pending::default();
        let actor = actor_of(caller);
        let mut orgs: HashMap<OrgName, (Organization, StreamVersion)> = HashMap::new();
        let mut plans: Vec<Planned> = Vec::new();
        let mut problems: Vec<ApiError> = Vec::new();
        let mut declared_tools = DeclaredTools::new();
        for (document, manifest) in &order {
            let document = *document;
            let org = manifest
                .org()
                .cloned()
                .ok_or_else(|| ApiError::internal("manifest without org".into()))?;
            let name = manifest.name().to_owned();
            let kind = manifest.kind();
            // Load what the manifest is about and plan.
            let (intents, existed, version, stream_key, staged): (
                Vec<Intent>,
                bool,
                StreamVersion,
                String,
                Staged,
            ) = match manifest {
                Manifest::Organization { .. } | Manifest::JobSpace { .. } => {
                    if !orgs.contains_key(&org) {
                        let loaded = self
                            .handler
                            .load::<Organization>(&org)
                            .await
                            .map_err(|e| ApiError::from_error(&e))?;
                        orgs.insert(org.clone(), (loaded.state, loaded.version));
                    }
                    let (state, version) = &orgs[&org];
                    let commands = match manifest {
                        Manifest::JobSpace {
                            metadata,
                            spec: space,
                            ..
                        } => plan_job_space(state, &metadata.name, space),
                        Manifest::Organization { spec, .. } => plan_organization(state, spec),
                        _ => vec![],
                    };
                    let existed = match manifest {
                        Manifest::JobSpace { metadata, .. } => state
                            .0
                            .as_ref()
                            .is_some_and(|s| s.job_spaces.contains_key(&metadata.name)),
                        _ => state.0.is_some(),
                    };
                    (
                        commands
                            .into_iter()
                            .map(|c| Intent::Org(org.clone(), c))
                            .collect(),
                        existed,
                        *version,
                        format!("org:{org}"),
                        Staged::Org,
                    )
                }
                Manifest::Subject { metadata, spec, .. } => {
                    let id = Scoped::new(org.clone(), metadata.name.clone());
                    let loaded = self
                        .handler
                        .load::<Subject>(&id)
                        .await
                        .map_err(|e| ApiError::from_error(&e))?;
                    let intents = plan_subject(&loaded.state, spec)
                        .into_iter()
                        .map(|c| Intent::Subject(id.clone(), SubjectIntent::Plain(c)))
                        .collect();
                    (
                        intents,
                        loaded.state.0.is_some(),
                        loaded.version,
                        id.to_string(),
                        Staged::Subject(loaded.state),
                    )
                }
                Manifest::Role { metadata, spec, .. } => {
                    let id = Scoped::new(org.clone(), metadata.name.clone());
                    let loaded = self
                        .handler
                        .load::<Role>(&id)
                        .await
                        .map_err(|e| ApiError::from_error(&e))?;
                    let intents = plan_role(&loaded.state, spec)
                        .into_iter()
                        .map(|c| Intent::Role(id.clone(), c))
                        .collect();
                    (
                        intents,
                        loaded.state.0.is_some(),
                        loaded.version,
                        id.to_string(),
                        Staged::Role(loaded.state),
                    )
                }
                Manifest::RoleBinding { metadata, spec, .. } => {
                    let id = Scoped::new(org.clone(), metadata.name.clone());
                    let loaded = self
                        .handler
                        .load::<RoleBinding>(&id)
                        .await
                        .map_err(|e| ApiError::from_error(&e))?;
                    let references = References {
                        subject_exists: true,
                        role_exists: true,
                        job_space_exists: true,
                    };
                    let intents = plan_binding(&loaded.state, spec, references)
                        .into_iter()
                        .map(|c| match c {
                            BindingCommand::Bind { spec, .. } => {
                                Intent::Binding(id.clone(), BindingIntent::Bind(spec))
                            }
                            BindingCommand::Unbind => {
                                Intent::Binding(id.clone(), BindingIntent::Unbind)
                            }
                        })
                        .collect();
                    (
                        intents,
                        loaded.state.0.is_some(),
                        loaded.version,
                        id.to_string(),
                        Staged::Binding(loaded.state),
                    )
                }
                Manifest::Policy { metadata, spec, .. } => {
                    let id = Scoped::new(org.clone(), metadata.name.clone());
                    let loaded = self
                        .handler
                        .load::<Policy>(&id)
                        .await
                        .map_err(|e| ApiError::from_error(&e))?;
                    let unchanged = loaded
                        .state
                        .0
                        .as_ref()
                        .is_some_and(|s| s.text == spec.policy);
                    let intents = if unchanged {
                        vec![]
                    } else {
                        vec![Intent::Policy(
                            id.clone(),
                            PolicyCommand::Publish {
                                text: spec.policy.clone(),
                            },
                        )]
                    };
                    (
                        intents,
                        loaded.state.0.is_some(),
                        loaded.version,
                        id.to_string(),
                        Staged::Policy(loaded.state),
                    )
                }
                Manifest::Tool { metadata, spec, .. } => {
                    let id = Scoped::new(org.clone(), metadata.name.clone());
                    let loaded = self
                        .handler
                        .load::<Tool>(&id)
                        .await
                        .map_err(|e| ApiError::from_error(&e))?;
                    let intents = plan_tool(&loaded.state, spec, &actor)
                        .into_iter()
                        .filter_map(|c| match c {
                            ToolCommand::Register { spec, .. } => {
                                Some(Intent::Tool(id.clone(), ToolIntent::Register(spec)))
                            }
                            _ => None,
                        })
                        .collect();
                    (
                        intents,
                        loaded.state.0.is_some(),
                        loaded.version,
                        id.to_string(),
                        Staged::Tool(loaded.state),
                    )
                }
                Manifest::Workflow { metadata, spec, .. } => {
                    let id = Scoped::new(org.clone(), metadata.name.clone());
                    let loaded = self
                        .handler
                        .load::<Workflow>(&id)
                        .await
                        .map_err(|e| ApiError::from_error(&e))?;
                    let registered = loaded
                        .state
                        .0
                        .as_ref()
                        .and_then(|w| w.version(Some(&spec.version)))
                        .is_some_and(|v| v.spec == **spec);
                    let intents = if registered {
                        vec![]
                    } else {
                        if let Err(mut error) =
                            self.check_workflow(&id, spec, &declared_tools).await
                        {
                            error.message =
                                format!("document {document} ({kind} `{name}`): {}", error.message);
                            problems.push(error);
                            continue;
                        }
                        vec![Intent::Workflow(id.clone(), spec.clone())]
                    };
                    (
                        intents,
                        loaded.state.0.is_some(),
                        loaded.version,
                        id.to_string(),
                        Staged::Workflow(loaded.state),
                    )
                }
            };

            // Unchanged objects are only read: the caller must be able to.
            if intents.is_empty() {
                let target = match manifest {
                    Manifest::Organization { .. } => {
                        Target::new(&org, ResourceKind::Organization, org.as_str())
                    }
                    Manifest::JobSpace { metadata, .. } => {
                        Target::new(&org, ResourceKind::JobSpace, metadata.name.as_str())
                            .in_job_space(Some(metadata.name.clone()))
                    }
                    Manifest::Subject { .. } => Target::new(&org, ResourceKind::Subject, &name),
                    Manifest::Role { .. } => Target::new(&org, ResourceKind::Role, &name),
                    Manifest::RoleBinding { .. } => {
                        Target::new(&org, ResourceKind::RoleBinding, &name)
                    }
                    Manifest::Policy { .. } => Target::new(&org, ResourceKind::Policy, &name),
                    Manifest::Tool { .. } => Target::new(&org, ResourceKind::Tool, &name),
                    Manifest::Workflow { .. } => Target::new(&org, ResourceKind::Workflow, &name),
                };
                self.authorize(caller, "get", &target).await?;
            }

            let mut readies = Vec::new();
            for intent in &intents {
                let (verdict, verb, target) = self.access.read_all(|authorizer, facts| {
                    let (verb, target) = Self::permission(authorizer, facts, &pending, intent);
                    (
                        Self::verdict(authorizer, &caller.principal, verb, &target),
                        verb,
                        target,
                    )
                });
                self.settle(caller, verb, &target, verdict).await?;
                let prepared = self.access.read_all(|authorizer, facts| {
                    Self::prepare(authorizer, facts, &pending, intent, &actor, options.force)
                });
                let ready = match prepared {
                    Ok((ready, _)) => ready,
                    Err(mut error) => {
                        error.message =
                            format!("document {document} ({kind} `{name}`): {}", error.message);
                        problems.push(error);
                        continue;
                    }
                };
                readies.push((intent.name().to_owned(), ready));
            }

            // Decide dry, in order, against the state the plan was made from.
            let rejection = match staged {
                Staged::Org => orgs.get_mut(&org).and_then(|(state, _)| {
                    dry_all(state, &readies, |r| match r {
                        Ready::Org(id, c) => Some((id, c)),
                        _ => None,
                    })
                    .map(|e| rejected(document, kind, &name, &e))
                }),
                Staged::Subject(mut state) => dry_all(&mut state, &readies, |r| match r {
                    Ready::Subject(id, c) => Some((id, c)),
                    _ => None,
                })
                .map(|e| rejected(document, kind, &name, &e)),
                Staged::Role(mut state) => dry_all(&mut state, &readies, |r| match r {
                    Ready::Role(id, c) => Some((id, c)),
                    _ => None,
                })
                .map(|e| rejected(document, kind, &name, &e)),
                Staged::Binding(mut state) => dry_all(&mut state, &readies, |r| match r {
                    Ready::Binding(id, c) => Some((id, c)),
                    _ => None,
                })
                .map(|e| rejected(document, kind, &name, &e)),
                Staged::Policy(mut state) => dry_all(&mut state, &readies, |r| match r {
                    Ready::Policy(id, c) => Some((id, c)),
                    _ => None,
                })
                .map(|e| rejected(document, kind, &name, &e)),
                Staged::Tool(mut state) => {
                    let rejection = dry_all(&mut state, &readies, |r| match r {
                        Ready::Tool(id, c) => Some((id, c)),
                        _ => None,
                    })
                    .map(|e| rejected(document, kind, &name, &e));
                    // A workflow later in the apply is checked against the
                    // tool as this apply leaves it.
                    if rejection.is_none()
                        && let (Manifest::Tool { metadata, .. }, Some(tool)) = (manifest, state.0)
                    {
                        declared_tools.insert((org.clone(), metadata.name.clone()), tool);
                    }
                    rejection
                }
                Staged::Workflow(mut state) => dry_all(&mut state, &readies, |r| match r {
                    Ready::Workflow(id, c) => Some((id, c)),
                    _ => None,
                })
                .map(|e| rejected(document, kind, &name, &e)),
            };
            let failed = rejection.is_some();
            problems.extend(rejection);
            if failed {
                continue;
            }

            // Later documents may refer to what this one creates.
            for (_, ready) in &readies {
                match ready {
                    Ready::Org(org, OrgCommand::Register { parent, .. }) => {
                        pending.orgs.insert(org.clone(), parent.clone());
                    }
                    Ready::Org(org, OrgCommand::SetJobSpace { name, .. }) => {
                        pending.job_spaces.insert((org.clone(), name.clone()));
                    }
                    Ready::Subject(id, SubjectCommand::Create { .. }) => {
                        pending
                            .subjects
                            .insert((id.org.clone(), id.name.to_string()));
                    }
                    Ready::Role(id, RoleCommand::Define { .. }) => {
                        pending.roles.insert((id.org.clone(), id.name.to_string()));
                    }
                    _ => {}
                }
            }
            plans.push(Planned {
                document,
                kind,
                org: org.clone(),
                name,
                stream_key,
                existed,
                readies,
                version,
            });
        }
        if let Some(first) = problems.first() {
            if problems.len() == 1 {
                return Err(first.clone());
            }
            let mut error = first.clone();
            error.message = problems
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            error.details = Some(Box::new(json!({
                "errors": problems
                    .iter()
                    .map(|p| json!({"code": p.code, "message": p.message, "details": p.details}))
                    .collect::<Vec<_>>()
            })));
            return Err(error);
        }

        // Phase 2: run.
        let mut items = Vec::with_capacity(plans.len());
        let mut last_position = None;
        let mut versions: HashMap<String, StreamVersion> = HashMap::new();
        for plan in &plans {
            let mut version = *versions.get(&plan.stream_key).unwrap_or(&plan.version);
            let planned_version = version;
            if !options.dry_run {
                for (_, ready) in &plan.readies {
                    let meta = self.meta(caller, &plan.org, None);
                    let handling = charter_commands::Handling {
                        expected: Some(version),
                        fresh_command_id: true,
                    };
                    let ran = self.run(ready, &meta, handling).await.map_err(|mut e| {
                        e.message = format!(
                            "document {} ({} `{}`): {}",
                            plan.document, plan.kind, plan.name, e.message
                        );
                        e
                    })?;
                    version = ran.version;
                    if ran.position.is_some() {
                        last_position = ran.position;
                    }
                }
                versions.insert(plan.stream_key.clone(), version);
            }
            items.push(ApplyItem {
                kind: plan.kind.to_owned(),
                org: plan.org.to_string(),
                name: plan.name.clone(),
                outcome: if plan.readies.is_empty() {
                    "unchanged"
                } else if plan.existed {
                    "updated"
                } else {
                    "created"
                }
                .to_owned(),
                commands: plan.readies.iter().map(|(n, _)| n.clone()).collect(),
                version: if options.dry_run {
                    planned_version.0
                } else {
                    version.0
                },
            });
        }
        // The caller's next request is decided with, and reads, what it
        // just applied (each wait bounded; a slow read model only delays).
        if let Some(position) = last_position {
            self.access.wait_for(position, self.read_wait).await;
            for projection in [
                charter_projections::organizations::PROJECTION,
                charter_projections::directory::DIRECTORY,
            ] {
                let _ = self.wait_visible(projection, Some(position.0)).await;
            }
        }
        items.sort_by_key(|item| {
            plans
                .iter()
                .find(|p| p.kind == item.kind && p.name == item.name && p.org.as_str() == item.org)
                .map(|p| p.document)
                .unwrap_or(usize::MAX)
        });
        Ok(ApplyReport {
            dry_run: options.dry_run,
            items,
            position: last_position.map(|p| p.0),
        })
    }
}
