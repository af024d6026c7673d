//! Expressions in workflow definitions: `when` conditions and input
//! mappings, written in CEL (the Common Expression Language).
//!
//! An [`Expression`] is parsed once, when a definition is applied; a syntax
//! error names its line and column. [`Expression::references`] lists the
//! variable paths it reads (`input.text`, `nodes.fetch.output.url`), so a
//! definition can be checked for reads of outputs a node cannot have before
//! anything runs. Evaluation is pure: JSON in, JSON out.

use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;

/// Why an expression did not parse, located (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SyntaxError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

/// A parsed CEL expression and its source.
#[derive(Clone)]
pub struct Expression {
    source: String,
    program: Arc<cel::Program>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expression({:?})", self.source)
    }
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Expression {
    pub fn parse(source: &str) -> Result<Self, SyntaxError> {
        if source.trim().is_empty() || source.len() > MAX_EXPRESSION_BYTES {
            return Err(SyntaxError {
                line: 1,
                column: 1,
                message: format!("must be 1 to {MAX_EXPRESSION_BYTES} bytes of CEL"),
            });
        }
        // The parser can recurse deeply on pathological nesting; the size
        // cap above and this one bound it.
        let depth = source
            .chars()
            .scan(0i32, |d, c| {
                match c {
                    '(' | '[' | '{' => *d += 1,
                    ')' | ']' | '}' => *d -= 1,
                    _ => {}
                }
                Some(*d)
            })
            .max()
            .unwrap_or(0);
        if depth > 32 {
            return Err(SyntaxError {
                line: 1,
                column: 1,
                message: "nested more than 32 levels deep".into(),
            });
        }
        if let Some(program) = cached(source) {
            return Ok(Self {
                source: source.to_owned(),
                program,
            });
        }
        match cel::Program::compile(source) {
            Ok(program) => {
                let program = Arc::new(program);
                remember(source, &program);
                Ok(Self {
                    source: source.to_owned(),
                    program,
                })
            }
            Err(errors) => {
                let first = errors.errors.first();
                Err(SyntaxError {
                    line: first.map_or(1, |e| u32::try_from(e.pos.0.max(1)).unwrap_or(1)),
                    column: first.map_or(1, |e| u32::try_from(e.pos.1.max(0) + 1).unwrap_or(1)),
                    message: first.map_or_else(|| "does not parse".to_owned(), |e| e.msg.clone()),
                })
            }
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The variable paths the expression reads, such as
    /// `["nodes", "fetch", "output", "url"]`; a path stops where it stops
    /// being a plain field or a constant index.
    pub fn references(&self) -> Vec<Vec<String>> {
        let mut found = Vec::new();
        walk(self.program.expression(), &[], &mut found);
        found.sort();
        found.dedup();
        found
    }

    /// Evaluates the expression with these variables.
    pub fn eval(&self, variables: &[(&str, &Value)]) -> Result<Value, String> {
        let mut context = cel::Context::default();
        for (name, value) in variables {
            context.add_variable_from_value(*name, to_cel(value));
        }
        let value = self.program.execute(&context).map_err(|e| e.to_string())?;
        value.json().map_err(|e| e.to_string())
    }

    /// Evaluates a condition: it must answer a boolean.
    pub fn eval_bool(&self, variables: &[(&str, &Value)]) -> Result<bool, String> {
        match self.eval(variables)? {
            Value::Bool(b) => Ok(b),
            other => Err(format!("a condition must be true or false, not {other}")),
        }
    }
}

/// Parsed programs by source: runs evaluate the same few expressions over
/// and over, and parsing is the costly part. Bounded; emptied when full.
type Programs = std::sync::Mutex<std::collections::HashMap<String, Arc<cel::Program>>>;

fn programs() -> &'static Programs {
    static PROGRAMS: std::sync::OnceLock<Programs> = std::sync::OnceLock::new();
    PROGRAMS.get_or_init(Default::default)
}

fn cached(source: &str) -> Option<Arc<cel::Program>> {
    programs()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(source)
        .cloned()
}

fn remember(source: &str, program: &Arc<cel::Program>) {
    let mut programs = programs()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if programs.len() >= 4096 {
        programs.clear();
    }
    programs.insert(source.to_owned(), Arc::clone(program));
}

/// JSON as CEL sees it: whole numbers are `int` (so `input.n + 1` works),
/// only those beyond `int` become `uint`.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(fields) => {
            let map: std::collections::HashMap<String, cel::Value> =
                fields.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(map)
        }
    }
}

/// The path a plain `a.b["c"]` chain spells, outermost last.
fn path_of(expr: &IdedExpr) -> Option<Vec<String>> {
    match &expr.expr {
        Expr::Ident(name) => Some(vec![name.clone()]),
        Expr::Select(select) if !select.test => {
            let mut path = path_of(&select.operand)?;
            path.push(select.field.clone());
            Some(path)
        }
        Expr::Call(call) if call.func_name == "_[_]" && call.args.len() == 2 => {
            let Expr::Literal(LiteralValue::String(key)) = &call.args[1].expr else {
                return None;
            };
            let mut path = path_of(&call.args[0])?;
            path.push(key.to_string());
            Some(path)
        }
        _ => None,
    }
}

fn walk(expr: &IdedExpr, bound: &[String], found: &mut Vec<Vec<String>>) {
    if let Some(path) = path_of(expr) {
        if !bound.contains(&path[0]) {
            found.push(path);
        }
        return;
    }
    match &expr.expr {
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                walk(target, bound, found);
            }
            for arg in &call.args {
                walk(arg, bound, found);
            }
        }
        Expr::Select(select) => walk(&select.operand, bound, found),
        Expr::List(list) => {
            for element in &list.elements {
                walk(element, bound, found);
            }
        }
        Expr::Map(map) => entries(&map.entries, bound, found),
        Expr::Struct(structure) => entries(&structure.entries, bound, found),
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound, found);
            let mut inner = bound.to_vec();
            inner.push(c.iter_var.clone());
            inner.extend(c.iter_var2.clone());
            inner.push(c.accu_var.clone());
            for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                walk(part, &inner, found);
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entries(
    entries: &[cel::common::ast::IdedEntryExpr],
    bound: &[String],
    found: &mut Vec<Vec<String>>,
) {
    for entry in entries {
        match &entry.expr {
            EntryExpr::StructField(field) => walk(&field.value, bound, found),
            EntryExpr::MapEntry(pair) => {
                walk(&pair.key, bound, found);
                walk(&pair.value, bound, found);
            }
        }
    }
}

impl Serialize for Expression {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Expression {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Self::parse(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_paths() {
        let e = Expression::parse(
            "input.amount > 10 && nodes.fetch.output.ok && size(nodes[\"b\"].output) > 0",
        )
        .unwrap();
        assert_eq!(
            e.references(),
            vec![
                vec!["input".to_owned(), "amount".to_owned()],
                vec!["nodes".to_owned(), "b".to_owned(), "output".to_owned()],
                vec![
                    "nodes".to_owned(),
                    "fetch".to_owned(),
                    "output".to_owned(),
                    "ok".to_owned()
                ],
            ]
        );
        let e = Expression::parse("input.items.all(x, x > 0)").unwrap();
        assert_eq!(
            e.references(),
            vec![vec!["input".to_owned(), "items".to_owned()]]
        );
    }

    #[test]
    fn evaluation_is_json_in_json_out() {
        let input = json!({"text": "a b", "n": 3});
        let nodes = json!({"count": {"output": {"words": 2}}});
        let e =
            Expression::parse("{'words': nodes.count.output.words, 'more': input.n + 1}").unwrap();
        assert_eq!(
            e.eval(&[("input", &input), ("nodes", &nodes)]).unwrap(),
            json!({"words": 2, "more": 4})
        );
        let c = Expression::parse("input.n > 2").unwrap();
        assert!(c.eval_bool(&[("input", &input)]).unwrap());
        let bad = Expression::parse("input.n").unwrap();
        assert!(bad.eval_bool(&[("input", &input)]).is_err());
        let missing = Expression::parse("input.nope > 1").unwrap();
        assert!(missing.eval(&[("input", &input)]).is_err());
    }

    #[test]
    fn syntax_errors_are_located() {
        let error = Expression::parse("input.a &&\n  (").unwrap_err();
        assert_eq!(error.line, 2, "{error}");
        assert!(Expression::parse("").is_err());
        assert!(Expression::parse(&"(".repeat(100)).is_err());
    }
}
