//! A given / when / then helper shared by every aggregate's tests.
//!
//! ```
//! use charter_domain::organization::*;
//! use charter_domain::testing::given;
//! # let name = charter_domain::OrgName::parse("acme").unwrap();
//! # let display = DisplayName::parse("Acme").unwrap();
//! given::<Organization>(&name, [])
//!     .when(OrgCommand::Register { display_name: display.clone(), tags: Tags::default(), parent: None })
//!     .then_expect([OrgEvent::Registered { name, display_name: display, tags: Tags::default(), parent: None }]);
//! ```

use crate::{Aggregate, ErrorCode};

/// A past: the events already in the stream of the instance `id`.
pub struct Given<A: Aggregate> {
    id: A::Id,
    state: A,
}

/// Starts a scenario for the instance `id` from these past events.
pub fn given<A: Aggregate>(id: &A::Id, events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let history: Vec<A::Event> = events.into_iter().collect();
    Given {
        id: id.clone(),
        state: A::replay(&history),
    }
}

impl<A: Aggregate> Given<A> {
    /// Runs one command against the state.
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = self.state.decide(&self.id, &command);
        Then {
            state: self.state,
            command,
            result,
        }
    }
}

/// The outcome of a command, to assert on.
pub struct Then<A: Aggregate> {
    state: A,
    command: A::Command,
    result: Result<Vec<A::Event>, A::Rejection>,
}

impl<A: Aggregate> Then<A> {
    /// Expects exactly these events; returns the state after them.
    #[track_caller]
    pub fn then_expect(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "command {:?}", self.command);
                let mut state = self.state;
                for event in &events {
                    state.evolve(event);
                }
                state
            }
            Err(rejection) => panic!(
                "command {:?} was rejected ({}: {rejection}), expected events {expected:?}",
                self.command,
                rejection.code()
            ),
        }
    }

    /// The decision itself, for assertions of another shape.
    pub fn result(self) -> Result<Vec<A::Event>, A::Rejection> {
        self.result
    }

    /// Expects the command to change nothing.
    #[track_caller]
    pub fn then_nothing(self) {
        self.then_expect([]);
    }

    /// Expects this rejection.
    #[track_caller]
    pub fn then_reject(self, expected: A::Rejection) {
        match self.result {
            Ok(events) => panic!(
                "command {:?} was accepted with {events:?}, expected rejection {expected:?}",
                self.command
            ),
            Err(rejection) => assert_eq!(rejection, expected, "command {:?}", self.command),
        }
    }

    /// Expects a rejection with this code.
    #[track_caller]
    pub fn then_reject_code(self, code: &str) {
        match self.result {
            Ok(events) => panic!(
                "command {:?} was accepted with {events:?}, expected a `{code}` rejection",
                self.command
            ),
            Err(rejection) => assert_eq!(rejection.code(), code, "rejection {rejection:?}"),
        }
    }
}
