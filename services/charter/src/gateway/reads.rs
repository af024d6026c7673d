//! Reads: every query is authorized (`get` for one object, `list` for a
//! listing) and scoped to the caller's org before it touches a read model.
//! Listings take filters and a cursor (the last name of the previous
//! page), and may ask to see at least a log position (read-your-writes).

use charter_domain::access::AccessRequest;
use charter_domain::ids::{JobSpaceName, Scoped, SubjectName};
use charter_domain::role::{Action, ResourceKind};
use charter_domain::{ErrorClass, OrgName};
use charter_projections::Document;
use charter_projections::directory::{
    AUDIT, BINDINGS, DENIALS, DIRECTORY, POLICIES, ROLES, RUNS, SUBJECTS, TOOLS, WORKFLOWS,
};
use charter_projections::organizations::{COLLECTION as ORGS, PROJECTION as ORG_PROJECTION};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::views::{
    AuditEntryView, BindingView, DecisionView, JobSpaceView, OrgView, PolicyView, RoleView,
    RunView, SubjectView, ToolView, WorkflowView,
};
use super::{ApiError, Caller, Gateway, Target};
use crate::auth::Principal;

/// Most items one page holds.
pub const MAX_LIMIT: usize = 500;
pub const DEFAULT_LIMIT: usize = 50;

/// Paging and read-your-writes, common to every listing.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PageArgs {
    /// Items per page, 1 to 500 (default 50).
    pub limit: Option<usize>,
    /// The `nextCursor` of the previous page.
    pub after: Option<String>,
    /// Wait (a bounded time) until the read model has applied the log
    /// through this position, e.g. the `position` a command returned.
    pub min_position: Option<u64>,
}

impl PageArgs {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::new(
                ErrorClass::InvalidInput,
                "invalid_limit",
                format!("limit must be 1 to {MAX_LIMIT}, not {n}"),
            )),
        }
    }

    fn after(&self) -> Result<Option<&str>, ApiError> {
        match self.after.as_deref() {
            Some(cursor) if cursor.len() > 200 || cursor.contains(':') => Err(ApiError::new(
                ErrorClass::InvalidInput,
                "invalid_cursor",
                "the cursor is not one this API gave out".into(),
            )),
            other => Ok(other),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams, async_graphql::InputObject)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
#[graphql(name = "OrganizationFilter")]
pub struct OrgFilter {
    /// `key=value` (or just `key`): orgs carrying that tag.
    pub tag: Option<String>,
    /// Orgs whose parent is this org.
    pub parent: Option<String>,
    /// Orgs whose name starts with this.
    pub name: Option<String>,
    /// Orgs in this lifecycle state (`Active`, `Suspended`, …).
    pub lifecycle: Option<String>,
}

impl OrgFilter {
    pub fn keeps(&self, org: &OrgView) -> bool {
        let tag_ok = match self.tag.as_deref() {
            None => true,
            Some(tag) => {
                let (key, value) = match tag.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (tag, None),
                };
                org.tags
                    .iter()
                    .any(|t| t.key == key && value.is_none_or(|v| t.value == v))
            }
        };
        tag_ok
            && self
                .parent
                .as_deref()
                .is_none_or(|p| org.parent.as_deref() == Some(p))
            && self.name.as_deref().is_none_or(|n| org.name.starts_with(n))
            && self
                .lifecycle
                .as_deref()
                .is_none_or(|l| org.lifecycle.eq_ignore_ascii_case(l))
    }
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams, async_graphql::InputObject)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct DirectoryFilter {
    /// Names starting with this.
    pub name: Option<String>,
    /// Subjects of this kind (`user`, `service_account`, `agent`).
    pub kind: Option<String>,
    /// Subjects that are (or are not) disabled.
    pub disabled: Option<bool>,
    /// Role bindings of this subject.
    pub subject: Option<String>,
    /// Role bindings to this role.
    pub role: Option<String>,
    /// Role bindings in this job space.
    pub job_space: Option<String>,
    /// Runs in this status (`running`, `succeeded`, `failed`, `cancelled`).
    pub status: Option<String>,
    /// Runs of this workflow.
    pub workflow: Option<String>,
}

/// A question for `checkAccess`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, async_graphql::InputObject)]
#[serde(rename_all = "camelCase")]
pub struct AccessQuestion {
    /// The subject asked about, `name` in the resource's org or `org:name`.
    pub subject: String,
    /// `get`, `list`, `create`, `update`, `delete`, `apply`, `approve`, …
    pub action: String,
    /// The org the resource lives in.
    pub org: String,
    /// The resource kind: `Organization`, `Subject`, `Role`, `RoleBinding`,
    /// `JobSpace`, `Policy`, `Tool`, `Workflow`, `WorkflowRun`, `Job`,
    /// `AuditLog`.
    pub kind: String,
    /// The resource's name (default `*`).
    #[serde(default)]
    pub name: Option<String>,
    /// The job space the resource lives in, if any.
    #[serde(default)]
    pub job_space: Option<String>,
}

fn parse_kind(kind: &str) -> Result<ResourceKind, ApiError> {
    ResourceKind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .ok_or_else(|| {
            ApiError::new(
                ErrorClass::InvalidInput,
                "unknown_kind",
                format!(
                    "unknown resource kind `{}`",
                    kind.chars().take(60).collect::<String>()
                ),
            )
        })
}

pub fn parse_org(org: &str) -> Result<OrgName, ApiError> {
    OrgName::parse(org).map_err(|e| ApiError::invalid_name(&e))
}

impl Gateway {
    /// Pages through one collection, keeping what `make` returns `Some`
    /// for. Keys are `prefix` + name; cursors are names.
    #[allow(clippy::too_many_arguments)]
    async fn scan<T>(
        &self,
        projection: &str,
        collection: &str,
        org: Option<&OrgName>,
        prefix: &str,
        page: &PageArgs,
        make: impl Fn(&Document) -> Result<Option<T>, ApiError>,
        name_of: impl Fn(&T) -> String,
    ) -> Result<Page<T>, ApiError> {
        let limit = page.limit()?;
        self.wait_visible(projection, page.min_position).await?;
        let mut after = page.after()?.map(|a| format!("{prefix}{a}"));
        let mut items = Vec::new();
        let batch = (limit * 2).clamp(50, 1000);
        loop {
            let docs = self
                .read_models
                .list(projection, collection, org, after.as_deref(), batch)
                .await
                .map_err(|e| ApiError::from_error(&e))?;
            let exhausted = docs.len() < batch;
            for doc in &docs {
                after = Some(doc.key.clone());
                if let Some(item) = make(doc)? {
                    items.push(item);
                    if items.len() == limit {
                        let next = items.last().map(&name_of);
                        return Ok(Page {
                            items,
                            next_cursor: next,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(Page {
                    items,
                    next_cursor: None,
                });
            }
        }
    }

    async fn org_doc(&self, org: &OrgName) -> Result<Option<OrgView>, ApiError> {
        let doc = self
            .read_models
            .get(ORG_PROJECTION, ORGS, org.as_str())
            .await
            .map_err(|e| ApiError::from_error(&e))?;
        doc.map(|d| OrgView::from_doc(&d.doc, d.position.0))
            .transpose()
    }

    /// `GET /v1/orgs`: the orgs the caller can see (its own; every org for
    /// root), filtered.
    pub async fn list_orgs(
        &self,
        caller: &Caller,
        filter: &OrgFilter,
        page: &PageArgs,
    ) -> Result<Page<OrgView>, ApiError> {
        match &caller.principal {
            Principal::Root => {
                self.scan(
                    ORG_PROJECTION,
                    ORGS,
                    None,
                    "",
                    page,
                    |doc| {
                        let org = OrgView::from_doc(&doc.doc, doc.position.0)?;
                        Ok(filter.keeps(&org).then_some(org))
                    },
                    |org| org.name.clone(),
                )
                .await
            }
            Principal::Subject(id) => {
                page.limit()?;
                self.wait_visible(ORG_PROJECTION, page.min_position).await?;
                self.authorize(
                    caller,
                    "list",
                    &Target::new(&id.org, ResourceKind::Organization, "*"),
                )
                .await?;
                let after = page.after()?;
                let own = self.org_doc(&id.org).await?;
                Ok(Page {
                    items: own
                        .into_iter()
                        .filter(|o| filter.keeps(o) && after.is_none_or(|a| o.name.as_str() > a))
                        .collect(),
                    next_cursor: None,
                })
            }
        }
    }

    /// `GET /v1/orgs/{org}`.
    pub async fn get_org(
        &self,
        caller: &Caller,
        org: &str,
        min_position: Option<u64>,
    ) -> Result<OrgView, ApiError> {
        let org = parse_org(org)?;
        self.authorize(
            caller,
            "get",
            &Target::new(&org, ResourceKind::Organization, org.as_str()),
        )
        .await?;
        self.wait_visible(ORG_PROJECTION, min_position).await?;
        self.org_doc(&org)
            .await?
            .ok_or_else(|| ApiError::not_found("organization", org.as_str()))
    }

    /// `GET /v1/orgs/{org}/jobspaces`.
    pub async fn list_job_spaces(
        &self,
        caller: &Caller,
        org: &str,
        min_position: Option<u64>,
    ) -> Result<Vec<JobSpaceView>, ApiError> {
        let org = parse_org(org)?;
        self.authorize(
            caller,
            "list",
            &Target::new(&org, ResourceKind::JobSpace, "*"),
        )
        .await?;
        self.wait_visible(ORG_PROJECTION, min_position).await?;
        Ok(self
            .org_doc(&org)
            .await?
            .ok_or_else(|| ApiError::not_found("organization", org.as_str()))?
            .job_spaces)
    }

    /// Checks the org exists for a listing inside it (after authorizing,
    /// so that another org's existence is never revealed).
    async fn require_org(&self, org: &OrgName) -> Result<(), ApiError> {
        let exists = self.access.read_all(|_, facts| facts.org(org).is_some())
            || self.org_doc(org).await?.is_some();
        if exists {
            Ok(())
        } else {
            Err(ApiError::not_found("organization", org.as_str()))
        }
    }

    /// `GET /v1/orgs/{org}/{subjects|roles|rolebindings|policies}`.
    #[allow(clippy::too_many_arguments)]
    pub async fn list_directory<T>(
        &self,
        caller: &Caller,
        org: &str,
        kind: ResourceKind,
        filter: &DirectoryFilter,
        page: &PageArgs,
        make: impl Fn(&Document) -> Result<T, ApiError>,
        keep: impl Fn(&T, &DirectoryFilter) -> bool,
        name_of: impl Fn(&T) -> String,
    ) -> Result<Page<T>, ApiError> {
        let org = parse_org(org)?;
        self.authorize(caller, "list", &Target::new(&org, kind, "*"))
            .await?;
        self.require_org(&org).await?;
        let prefix = format!("{org}:");
        self.scan(
            DIRECTORY,
            collection(kind),
            Some(&org),
            &prefix,
            page,
            |doc| {
                let item = make(doc)?;
                let name_ok = filter
                    .name
                    .as_deref()
                    .is_none_or(|n| name_of(&item).starts_with(n));
                Ok((name_ok && keep(&item, filter)).then_some(item))
            },
            &name_of,
        )
        .await
    }

    /// `GET /v1/orgs/{org}/{kind}/{name}`: one document of the directory.
    pub async fn get_directory<T>(
        &self,
        caller: &Caller,
        org: &str,
        kind: ResourceKind,
        name: &str,
        min_position: Option<u64>,
        make: impl Fn(&Document) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let org = parse_org(org)?;
        if name.is_empty() || name.len() > 120 || name.contains(':') {
            return Err(ApiError::not_found(super::kind_label(kind), name));
        }
        self.authorize(caller, "get", &Target::new(&org, kind, name))
            .await?;
        self.wait_visible(DIRECTORY, min_position).await?;
        let doc = self
            .read_models
            .get(DIRECTORY, collection(kind), &format!("{org}:{name}"))
            .await
            .map_err(|e| ApiError::from_error(&e))?
            .filter(|d| d.org == org)
            .ok_or_else(|| ApiError::not_found(super::kind_label(kind), name))?;
        make(&doc)
    }

    /// `GET /v1/orgs/{org}/audit`: the org's denied requests, oldest first.
    pub async fn audit(
        &self,
        caller: &Caller,
        org: &str,
        page: &PageArgs,
    ) -> Result<Page<AuditEntryView>, ApiError> {
        let org = parse_org(org)?;
        self.authorize(
            caller,
            "list",
            &Target::new(&org, ResourceKind::AuditLog, "*"),
        )
        .await?;
        self.require_org(&org).await?;
        let prefix = format!("{org}:");
        self.scan(
            AUDIT,
            DENIALS,
            Some(&org),
            &prefix,
            page,
            |doc| AuditEntryView::from_doc(&doc.key, doc.org.as_str(), &doc.doc).map(Some),
            |entry| entry.id.clone(),
        )
        .await
    }

    /// `checkAccess`: may this subject do this action on this resource,
    /// and what decides it? A subject may ask about itself; asking about
    /// others takes `get` on role bindings in the org.
    pub async fn check_access(
        &self,
        caller: &Caller,
        question: &AccessQuestion,
    ) -> Result<DecisionView, ApiError> {
        let org = parse_org(&question.org)?;
        let subject: Scoped<SubjectName> = match question.subject.split_once(':') {
            Some(_) => question
                .subject
                .parse()
                .map_err(|e| ApiError::invalid_name(&e))?,
            None => Scoped::new(
                org.clone(),
                SubjectName::parse(question.subject.as_str())
                    .map_err(|e| ApiError::invalid_name(&e))?,
            ),
        };
        let kind = parse_kind(&question.kind)?;
        let action = Action::parse(&question.action).map_err(|e| ApiError::invalid_name(&e))?;
        let job_space = question
            .job_space
            .as_deref()
            .map(JobSpaceName::parse)
            .transpose()
            .map_err(|e| ApiError::invalid_name(&e))?;
        let asking_about_self = caller.principal == Principal::Subject(subject.clone());
        if !asking_about_self {
            self.authorize(
                caller,
                "get",
                &Target::new(&org, ResourceKind::RoleBinding, "*"),
            )
            .await?;
        }
        self.require_org(&org).await?;
        if subject.org != org {
            // Subjects act only in their own org.
            return Ok(DecisionView {
                allowed: false,
                grants: vec![],
                permitted_by: vec![],
                forbidden_by: vec![],
                denied_because: Some("unknown_subject".into()),
                decided_by: None,
            });
        }
        let name = question.name.clone().unwrap_or_else(|| "*".into());
        let decision = self.access.read(|authorizer| {
            authorizer.decide(
                &AccessRequest {
                    org: &org,
                    subject: &subject.name,
                    action: &action,
                    kind,
                    job_space: job_space.as_ref(),
                },
                &name,
            )
        });
        Ok(DecisionView::from(&decision))
    }
}

/// The directory collection of a kind.
pub fn collection(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Subject => SUBJECTS,
        ResourceKind::Role => ROLES,
        ResourceKind::RoleBinding => BINDINGS,
        ResourceKind::Tool => TOOLS,
        ResourceKind::Workflow => WORKFLOWS,
        ResourceKind::WorkflowRun => RUNS,
        _ => POLICIES,
    }
}

/// Builders and filters for each directory kind.
pub fn subject_item(doc: &Document) -> Result<SubjectView, ApiError> {
    SubjectView::from_doc(&doc.doc, doc.position.0)
}
pub fn role_item(doc: &Document) -> Result<RoleView, ApiError> {
    RoleView::from_doc(&doc.doc, doc.position.0)
}
pub fn binding_item(doc: &Document) -> Result<BindingView, ApiError> {
    BindingView::from_doc(&doc.doc, doc.position.0)
}
pub fn policy_item(doc: &Document) -> Result<PolicyView, ApiError> {
    PolicyView::from_doc(&doc.doc, doc.position.0)
}
pub fn tool_item(doc: &Document) -> Result<ToolView, ApiError> {
    ToolView::from_doc(&doc.doc, doc.position.0)
}
pub fn workflow_item(doc: &Document) -> Result<WorkflowView, ApiError> {
    WorkflowView::from_doc(&doc.doc, doc.position.0)
}
pub fn run_item(doc: &Document) -> Result<RunView, ApiError> {
    RunView::from_doc(&doc.doc, doc.position.0)
}
pub fn keep_run(r: &RunView, f: &DirectoryFilter) -> bool {
    f.status.as_deref().is_none_or(|s| r.status == s)
        && f.workflow.as_deref().is_none_or(|w| r.workflow == w)
}

pub fn keep_subject(s: &SubjectView, f: &DirectoryFilter) -> bool {
    f.kind.as_deref().is_none_or(|k| s.kind == k) && f.disabled.is_none_or(|d| s.disabled == d)
}
pub fn keep_binding(b: &BindingView, f: &DirectoryFilter) -> bool {
    f.subject.as_deref().is_none_or(|s| b.subject == s)
        && f.role.as_deref().is_none_or(|r| b.role == r)
        && f.job_space
            .as_deref()
            .is_none_or(|j| b.job_space.as_deref() == Some(j))
}
pub fn keep_any<T>(_: &T, _: &DirectoryFilter) -> bool {
    true
}
