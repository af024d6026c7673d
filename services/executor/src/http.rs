//! The HTTP runtime: the input goes out as the JSON body (as query
//! parameters for `GET`), a 2xx JSON body comes back as the output. The
//! timeout covers the whole exchange, the body is read up to the tool's
//! output cap, and redirects are not followed (a redirect is a status
//! outside 2xx, so a tool cannot be bounced to an address nobody approved).

use charter_domain::tool::{HttpMethod, HttpRuntime};
use serde_json::Value;

use crate::{Call, Failure, FailureCode, redact, tail};

/// A `GET` call's query: the input's top-level scalars.
fn query(input: &Value) -> Vec<(String, String)> {
    let Some(fields) = input.as_object() else {
        return Vec::new();
    };
    fields
        .iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect()
}

pub(crate) async fn run(
    client: &reqwest::Client,
    call: &Call<'_>,
    endpoint: &HttpRuntime,
    secrets: &[(String, String)],
) -> Result<(Value, String), Failure> {
    let limits = &call.spec.limits;
    let method = match endpoint.method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Patch => reqwest::Method::PATCH,
        HttpMethod::Delete => reqwest::Method::DELETE,
    };
    let mut request = client
        .request(method, &endpoint.url)
        .timeout(limits.timeout.as_duration())
        .header("Idempotency-Key", call.idempotency_key)
        .header("Charter-Data-Scopes", call.scopes.join(","))
        .header("Accept", "application/json");
    for (name, value) in &endpoint.headers {
        request = request.header(name.as_str(), value);
    }
    for (name, value) in secrets {
        request = request.header(name.as_str(), value);
    }
    request = match endpoint.method {
        HttpMethod::Get => request.query(&query(call.input)),
        _ => request.json(call.input),
    };
    let failed = |e: reqwest::Error| {
        let code = if e.is_timeout() {
            FailureCode::Timeout
        } else {
            FailureCode::Unreachable
        };
        // reqwest's message names the URL, never a header.
        Failure::new(code, redact(&e.to_string(), secrets))
    };
    let mut response = request.send().await.map_err(failed)?;
    let status = response.status();
    let cap = limits.output_bytes as usize;
    let mut body = Vec::new();
    let mut flooded = false;
    while let Some(chunk) = tokio::time::timeout(limits.timeout.as_duration(), response.chunk())
        .await
        .map_err(|_| {
            Failure::new(
                FailureCode::Timeout,
                format!("the endpoint ran past the timeout of {}", limits.timeout),
            )
        })?
        .map_err(failed)?
    {
        if body.len() + chunk.len() > cap {
            body.extend_from_slice(&chunk[..cap - body.len()]);
            flooded = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    let text = redact(&String::from_utf8_lossy(&body), secrets);
    if !status.is_success() {
        let mut failure = Failure::new(
            FailureCode::HttpStatus,
            format!("the endpoint answered {status}"),
        )
        .with_status(i32::from(status.as_u16()))
        .with_stderr(tail(&text));
        failure.retryable = status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT;
        return Err(failure);
    }
    if flooded {
        return Err(Failure::new(
            FailureCode::OutputTooLarge,
            format!("the endpoint's answer is larger than {cap} bytes; the rest was dropped"),
        ));
    }
    serde_json::from_str(&text)
        .map(|v| (v, String::new()))
        .map_err(|e| {
            Failure::new(
                FailureCode::OutputNotJson,
                format!("the endpoint's answer is not one JSON value: {e}"),
            )
            .with_stderr(tail(&text))
        })
}
