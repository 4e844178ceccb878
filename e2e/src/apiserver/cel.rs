//! CEL evaluation with the Kubernetes CEL library functions WireKube's CRDs and policies use.
//!
//! Built on the `cel` crate (its standard library plus its `strings` extension). On top of it
//! this module provides the Kubernetes IP/CIDR library:
//!
//! * `isIP(string)`, `ip(string)`, `<ip>.family()`, `<ip>.isLoopback()`, `<ip>.isUnspecified()`
//! * `isCIDR(string)`, `cidr(string)`, `<cidr>.prefixLength()`, `<cidr>.ip()`,
//!   `<cidr>.masked()`, `<cidr>.containsIP(ip|string)`, `<cidr>.containsCIDR(cidr|string)`
//!
//! Every function a program calls is checked when it is compiled: a function that neither the
//! `cel` crate nor this module provides is a compile error (as kube-apiserver rejects a CRD whose
//! rule calls an unknown function), never a rule that silently passes.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use cel::extractors::This;
use cel::objects::{Key, Map, Opaque};
use cel::{Context, Env, ExecutionError, Program, Value};
use thiserror::Error;

/// A CEL expression that failed to compile or to evaluate.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum CelError {
    #[error("compilation failed for {expression:?}: {message}")]
    Compile { expression: String, message: String },
    #[error("evaluation failed for {expression:?}: {message}")]
    Eval { expression: String, message: String },
    #[error("{expression:?} evaluated to {got}, expected {want}")]
    Type {
        expression: String,
        got: String,
        want: &'static str,
    },
}

/// Functions of the `cel` crate's standard library and `strings` extension that a program may
/// call (operators and macros are always allowed).
const CRATE_FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "dyn",
    "type",
    "duration",
    "timestamp",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    "charAt",
    "indexOf",
    "lastIndexOf",
    "join",
    "lowerAscii",
    "upperAscii",
    "trim",
    "replace",
    "split",
    "substring",
    "format",
    "reverse",
    "strings.quote",
    "optional.of",
    "optional.none",
    "optional.ofNonZeroValue",
    "hasValue",
    "value",
    "orValue",
    "or",
];

/// Functions this module adds (the Kubernetes IP/CIDR library).
const K8S_FUNCTIONS: &[&str] = &[
    "isIP",
    "ip",
    "family",
    "isLoopback",
    "isUnspecified",
    "isCIDR",
    "cidr",
    "prefixLength",
    "masked",
    "containsIP",
    "containsCIDR",
];

fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // The strings extension only fails on a duplicate declaration, impossible on a fresh Env;
        // should it ever fail, programs using its functions fail to evaluate with a clear error.
        let _ = env.add_extension(cel::extensions::strings);
        Arc::new(env)
    })
    .clone()
}

/// A compiled CEL program, evaluated any number of times.
pub struct CelProgram {
    expression: String,
    program: Program,
}

impl fmt::Debug for CelProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CelProgram")
            .field("expression", &self.expression)
            .finish()
    }
}

impl CelProgram {
    /// Compiles `expression`, checking that every function it calls is supported.
    pub fn compile(expression: &str) -> Result<CelProgram, CelError> {
        let compile_error = |message: String| CelError::Compile {
            expression: expression.to_string(),
            message,
        };
        // The parser is generated code; it must not take the server down on odd input.
        let compiled = std::panic::catch_unwind(|| env().compile(expression))
            .map_err(|_| compile_error("the CEL parser panicked".to_string()))?;
        let program = compiled.map_err(|e| compile_error(e.to_string()))?;
        let mut unknown: Vec<String> = program
            .references()
            .functions()
            .into_iter()
            .filter(|f| f.starts_with(|c: char| c.is_ascii_alphabetic()))
            .filter(|f| !CRATE_FUNCTIONS.contains(f) && !K8S_FUNCTIONS.contains(f))
            .map(str::to_string)
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(compile_error(format!(
                "undeclared reference to unsupported function(s): {}",
                unknown.join(", ")
            )));
        }
        Ok(CelProgram {
            expression: expression.to_string(),
            program,
        })
    }

    /// The source of this program.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Whether the program refers to variable `name` (e.g. `oldSelf`).
    pub fn references_variable(&self, name: &str) -> bool {
        self.program.references().has_variable(name)
    }

    /// Evaluates the program with `vars` bound.
    pub fn eval(&self, vars: &[(&str, Value)]) -> Result<Value, CelError> {
        let mut ctx = Context::with_env(env());
        register_k8s_functions(&mut ctx).map_err(|e| self.eval_error(e.to_string()))?;
        for (name, value) in vars {
            ctx.add_variable_from_value(*name, value.clone());
        }
        let program = &self.program;
        let ctx = &ctx;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program.execute(ctx))) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.eval_error(e.to_string())),
            Err(_) => Err(self.eval_error("the CEL interpreter panicked".to_string())),
        }
    }

    /// Evaluates the program, which must return a bool.
    pub fn eval_bool(&self, vars: &[(&str, Value)]) -> Result<bool, CelError> {
        match self.eval(vars)? {
            Value::Bool(b) => Ok(b),
            other => Err(self.type_error(&other, "bool")),
        }
    }

    /// Evaluates the program, which must return a string.
    pub fn eval_string(&self, vars: &[(&str, Value)]) -> Result<String, CelError> {
        match self.eval(vars)? {
            Value::String(s) => Ok(s.to_string()),
            other => Err(self.type_error(&other, "string")),
        }
    }

    fn eval_error(&self, message: String) -> CelError {
        CelError::Eval {
            expression: self.expression.clone(),
            message,
        }
    }

    fn type_error(&self, got: &Value, want: &'static str) -> CelError {
        CelError::Type {
            expression: self.expression.clone(),
            got: got.type_of().to_string(),
            want,
        }
    }
}

/// Converts JSON to a CEL value: integers become `int` (or `uint` beyond `i64`), other numbers
/// `double`, objects maps with string keys.
pub fn json_to_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(json_to_value).collect()))
        }
        serde_json::Value::Object(fields) => {
            let map = fields
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_value(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// Renders a CEL value for messages.
pub fn display_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".to_string(),
        other => format!("{other:?}"),
    }
}

/// An IP address value (`ip(...)`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct IpValue(IpAddr);

impl Opaque for IpValue {
    fn runtime_type_name(&self) -> &str {
        "net.IP"
    }
}

/// A CIDR value (`cidr(...)`): the address as written and the prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CidrValue {
    addr: IpAddr,
    prefix: u8,
}

impl Opaque for CidrValue {
    fn runtime_type_name(&self) -> &str {
        "net.CIDR"
    }
}

/// Parses an IP like Kubernetes' `isIP`: no zone, no IPv4-mapped IPv6 form.
fn parse_ip(s: &str) -> Option<IpAddr> {
    if s.contains('%') {
        return None;
    }
    let ip: IpAddr = s.parse().ok()?;
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => None,
        ip => Some(ip),
    }
}

fn parse_cidr(s: &str) -> Option<CidrValue> {
    let (addr, prefix) = s.split_once('/')?;
    let addr = parse_ip(addr)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(CidrValue { addr, prefix })
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

fn cidr_contains(outer: &CidrValue, addr: IpAddr) -> bool {
    addr.is_ipv4() == outer.addr.is_ipv4()
        && mask(addr, outer.prefix) == mask(outer.addr, outer.prefix)
}

fn fn_error(function: &str, message: impl ToString) -> ExecutionError {
    ExecutionError::function_error(function, message)
}

fn as_ip(function: &str, v: &Value) -> Result<IpAddr, ExecutionError> {
    match v {
        Value::Opaque(o) => o
            .downcast_ref::<IpValue>()
            .map(|ip| ip.0)
            .ok_or_else(|| fn_error(function, "argument is not an IP")),
        Value::String(s) => {
            parse_ip(s).ok_or_else(|| fn_error(function, format!("IP Address {s:?} parse error")))
        }
        _ => Err(fn_error(function, "argument is not an IP")),
    }
}

fn as_cidr(function: &str, v: &Value) -> Result<CidrValue, ExecutionError> {
    match v {
        Value::Opaque(o) => o
            .downcast_ref::<CidrValue>()
            .cloned()
            .ok_or_else(|| fn_error(function, "argument is not a CIDR")),
        Value::String(s) => parse_cidr(s)
            .ok_or_else(|| fn_error(function, format!("network address {s:?} parse error"))),
        _ => Err(fn_error(function, "argument is not a CIDR")),
    }
}

fn opaque(v: impl Opaque) -> Value {
    Value::Opaque(Arc::new(v))
}

fn register_k8s_functions(ctx: &mut Context<'_, '_>) -> Result<(), cel::DeclarationError> {
    ctx.add_function("isIP", |s: Arc<String>| parse_ip(&s).is_some())?;
    ctx.add_function("isCIDR", |s: Arc<String>| parse_cidr(&s).is_some())?;
    // `ip(string)` and `<cidr>.ip()`.
    ctx.add_function(
        "ip",
        |This(v): This<Value>| -> Result<Value, ExecutionError> {
            match &v {
                Value::Opaque(o) if o.downcast_ref::<CidrValue>().is_some() => {
                    Ok(opaque(IpValue(as_cidr("ip", &v)?.addr)))
                }
                _ => Ok(opaque(IpValue(as_ip("ip", &v)?))),
            }
        },
    )?;
    ctx.add_function(
        "cidr",
        |This(v): This<Value>| -> Result<Value, ExecutionError> {
            Ok(opaque(as_cidr("cidr", &v)?))
        },
    )?;
    ctx.add_function(
        "family",
        |This(v): This<Value>| -> Result<i64, ExecutionError> {
            Ok(if as_ip("family", &v)?.is_ipv4() { 4 } else { 6 })
        },
    )?;
    ctx.add_function(
        "isLoopback",
        |This(v): This<Value>| -> Result<bool, ExecutionError> {
            Ok(as_ip("isLoopback", &v)?.is_loopback())
        },
    )?;
    ctx.add_function(
        "isUnspecified",
        |This(v): This<Value>| -> Result<bool, ExecutionError> {
            Ok(as_ip("isUnspecified", &v)?.is_unspecified())
        },
    )?;
    ctx.add_function(
        "prefixLength",
        |This(v): This<Value>| -> Result<i64, ExecutionError> {
            Ok(i64::from(as_cidr("prefixLength", &v)?.prefix))
        },
    )?;
    ctx.add_function(
        "masked",
        |This(v): This<Value>| -> Result<Value, ExecutionError> {
            let c = as_cidr("masked", &v)?;
            Ok(opaque(CidrValue {
                addr: mask(c.addr, c.prefix),
                prefix: c.prefix,
            }))
        },
    )?;
    ctx.add_function(
        "containsIP",
        |This(v): This<Value>, other: Value| -> Result<bool, ExecutionError> {
            let c = as_cidr("containsIP", &v)?;
            Ok(cidr_contains(&c, as_ip("containsIP", &other)?))
        },
    )?;
    ctx.add_function(
        "containsCIDR",
        |This(v): This<Value>, other: Value| -> Result<bool, ExecutionError> {
            let c = as_cidr("containsCIDR", &v)?;
            let inner = as_cidr("containsCIDR", &other)?;
            Ok(inner.prefix >= c.prefix && cidr_contains(&c, inner.addr))
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expr: &str) -> Result<Value, CelError> {
        CelProgram::compile(expr)?.eval(&[])
    }

    #[test]
    fn programs_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CelProgram>();
    }

    #[test]
    fn ip_and_cidr_library() {
        for (expr, want) in [
            ("isIP('10.0.0.1')", true),
            ("isIP('10.0.0.1/8')", false),
            ("isIP('::ffff:1.2.3.4')", false),
            ("ip('fd00::1').family() == 6", true),
            ("ip('127.0.0.1').isLoopback()", true),
            ("isCIDR('100.64.0.0/10')", true),
            ("isCIDR('100.64.0.0/33')", false),
            ("isCIDR('100.64.0.0')", false),
            ("cidr('100.64.0.0/10').prefixLength() == 10", true),
            ("cidr('100.64.0.0/10').ip().family() == 4", true),
            ("cidr('10.1.2.3/8').masked() == cidr('10.0.0.0/8')", true),
            ("cidr('10.0.0.0/8').containsIP('10.9.9.9')", true),
            ("cidr('10.0.0.0/8').containsIP(ip('11.0.0.1'))", false),
            ("cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16')", true),
            ("cidr('10.0.0.0/16').containsCIDR('10.0.0.0/8')", false),
        ] {
            assert_eq!(eval(expr), Ok(Value::Bool(want)), "{expr}");
        }
        assert!(matches!(
            eval("cidr('nope').prefixLength()"),
            Err(CelError::Eval { .. })
        ));
    }

    #[test]
    fn unknown_functions_fail_to_compile() {
        let err = CelProgram::compile("self == 1 || quantity('1Gi').isInteger()").unwrap_err();
        assert!(err.to_string().contains("quantity"), "{err}");
        assert!(matches!(
            CelProgram::compile("1 +"),
            Err(CelError::Compile { .. })
        ));
    }
}
