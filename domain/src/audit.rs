//! The audit log of denied requests.
//!
//! Every command or query the gateway refuses is recorded as one
//! `AccessDenied` event on a stream of its own (`audit-<org>:<id>`), so
//! that recording never contends with anything, the record is part of the
//! replayable log and published like every other event, and the audit
//! projection can list an org's denials in time order (the ids are UUID v7).

use serde::{Deserialize, Serialize};

use crate::ids::JobSpaceName;
use crate::role::ResourceKind;
use crate::{Aggregate, DomainEvent, ErrorClass, ErrorCode};

crate::ids::org_uuid_id!(
    /// One audit record's identity: the org it belongs to and a
    /// time-ordered id.
    AuditId,
    "audit id"
);

/// What was refused, to whom, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// Who asked: `root` or `org:subject`.
    pub principal: String,
    pub action: String,
    pub kind: ResourceKind,
    /// The resource's name (`*` for a listing).
    pub resource: String,
    pub job_space: Option<JobSpaceName>,
    /// The operation as the caller named it, e.g. `POST /v1/commands`.
    pub operation: String,
    /// `no_grant`, `unknown_subject`, `subject_disabled`, `forbidden`,
    /// `policy_evaluation_failed`, `other_org`.
    pub reason: String,
    /// Org policies (`name#index`) whose `forbid` matched.
    #[serde(default)]
    pub forbidden_by: Vec<String>,
}

/// Longest text kept in any field of a denial.
const MAX_FIELD_CHARS: usize = 300;

impl Denial {
    /// The denial with every free-text field cut to a bounded length, so
    /// that a hostile request cannot make the log grow without bound.
    pub fn bounded(mut self) -> Self {
        for field in [
            &mut self.principal,
            &mut self.action,
            &mut self.resource,
            &mut self.operation,
            &mut self.reason,
        ] {
            if field.chars().count() > MAX_FIELD_CHARS {
                *field = field.chars().take(MAX_FIELD_CHARS).collect();
            }
        }
        self.forbidden_by.truncate(20);
        self
    }
}

/// One audit record; `None` until recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord(pub Option<Denial>);

#[derive(Debug, Clone, PartialEq)]
pub enum AuditCommand {
    RecordDenial(Denial),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AuditEvent {
    AccessDenied(Denial),
}

impl DomainEvent for AuditEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::AccessDenied(_) => "AccessDenied",
        }
    }
}

/// Audit records are never refused; the type exists for the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record refused")]
pub struct AuditRejection;

impl ErrorCode for AuditRejection {
    fn code(&self) -> &'static str {
        "audit_refused"
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::Internal
    }
}

impl Aggregate for AuditRecord {
    const KIND: &'static str = "audit";
    type Id = AuditId;
    type Command = AuditCommand;
    type Event = AuditEvent;
    type Rejection = AuditRejection;

    fn decide(
        &self,
        _id: &AuditId,
        command: &AuditCommand,
    ) -> Result<Vec<AuditEvent>, AuditRejection> {
        match (command, &self.0) {
            // A record is written once; a repeat changes nothing.
            (AuditCommand::RecordDenial(_), Some(_)) => Ok(vec![]),
            (AuditCommand::RecordDenial(denial), None) => {
                Ok(vec![AuditEvent::AccessDenied(denial.clone().bounded())])
            }
        }
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }

    fn evolve(&mut self, event: &AuditEvent) {
        match event {
            AuditEvent::AccessDenied(denial) => self.0 = Some(denial.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OrgName;
    use crate::testing::given;

    fn denial(resource: &str) -> Denial {
        Denial {
            principal: "acme:bob".into(),
            action: "delete".into(),
            kind: ResourceKind::Role,
            resource: resource.into(),
            job_space: None,
            operation: "POST /v1/commands".into(),
            reason: "no_grant".into(),
            forbidden_by: vec![],
        }
    }

    fn id() -> AuditId {
        AuditId::new(OrgName::parse("acme").unwrap())
    }

    #[test]
    fn a_denial_is_recorded_once() {
        let id = id();
        given::<AuditRecord>(&id, [])
            .when(AuditCommand::RecordDenial(denial("admin")))
            .then_expect([AuditEvent::AccessDenied(denial("admin"))]);
        given::<AuditRecord>(&id, [AuditEvent::AccessDenied(denial("admin"))])
            .when(AuditCommand::RecordDenial(denial("admin")))
            .then_nothing();
    }

    #[test]
    fn long_fields_are_cut() {
        let long = "x".repeat(10_000);
        let events = AuditRecord::default()
            .decide(&id(), &AuditCommand::RecordDenial(denial(&long)))
            .unwrap();
        let AuditEvent::AccessDenied(recorded) = &events[0];
        assert_eq!(recorded.resource.chars().count(), MAX_FIELD_CHARS);
    }

    #[test]
    fn ids_round_trip() {
        let id = id();
        assert_eq!(id.to_string().parse::<AuditId>().unwrap(), id);
        assert!("acme".parse::<AuditId>().is_err());
        assert!("acme:not-a-uuid".parse::<AuditId>().is_err());
    }
}
