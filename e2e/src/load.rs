//! Load for the benchmarks, measured so that it cannot flatter:
//!
//! - [`open_loop`] sends at a fixed arrival rate and measures each
//!   request's latency from the time it was *meant* to be sent, so a server
//!   that stalls is charged for every request that waited behind the stall
//!   (no coordinated omission);
//! - [`closed_loop`] sends as fast as replies come back, which gives the
//!   most a server sustains (throughput), not a latency to quote;
//! - every reply is checked to be the success the benchmark intends, and
//!   failures are counted and shown, never folded into the latencies.
//!
//! Percentiles are exact, over every latency measured on the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;

use crate::https_client::{HttpsClient, HttpsReply, send};

/// One request of a load.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// `POST`, `GET`...
    pub method: &'static str,
    /// The path.
    pub path: String,
    /// The bearer token, if any.
    pub bearer: Option<Arc<str>>,
    /// The body.
    pub body: Bytes,
}

/// The `n`th request of a load (from 0, across all connections).
pub type Requests = Arc<dyn Fn(u64) -> LoadRequest + Send + Sync>;

/// Whether a reply is the success the load intends.
pub type Check = fn(&HttpsReply) -> bool;

/// What a load measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Latencies of the successful requests, sorted.
    pub latencies: Vec<Duration>,
    /// How long the load ran.
    pub wall: Duration,
    /// Requests whose reply was not the intended success (or had none).
    pub failed: usize,
    /// The first few failures, as status and body.
    pub failures: Vec<String>,
}

impl LoadReport {
    /// Successful requests a second.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(f64::EPSILON)
    }

    /// The `q` quantile (0..=1) of the latencies, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        crate::percentile(&self.latencies, q).as_secs_f64() * 1000.0
    }

    /// One line: rate, requests, p50/p99/p99.9/max and failures.
    pub fn summary(&self) -> String {
        let max = self
            .latencies
            .last()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        format!(
            "{:.0} ok/s ({} ok, {} failed); p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            self.rate(),
            self.latencies.len(),
            self.failed,
            self.ms(0.50),
            self.ms(0.99),
            self.ms(0.999),
            max
        )
    }

    fn merge(&mut self, other: LoadReport) {
        self.latencies.extend(other.latencies);
        self.failed += other.failed;
        for failure in other.failures {
            if self.failures.len() < 3 {
                self.failures.push(failure);
            }
        }
    }
}

/// Sends `requests` at `rate` a second in all, spread over `connections`
/// keep-alive connections, for `duration`; latency runs from each
/// request's intended send time to its reply.
pub async fn open_loop(
    https: &HttpsClient,
    connections: u64,
    rate: f64,
    duration: Duration,
    requests: Requests,
    check: Check,
) -> LoadReport {
    let connections = connections.max(1);
    let interval = Duration::from_secs_f64(1.0 / rate.max(f64::MIN_POSITIVE));
    let total = (duration.as_secs_f64() * rate).ceil() as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (https, requests) = (https.clone(), Arc::clone(&requests));
            tokio::spawn(async move {
                let mut report = LoadReport::default();
                let Some(mut sender) = connect(&https, &mut report).await else {
                    return report;
                };
                // Request n goes on connection n % connections.
                let mut n = c;
                while n < total {
                    let intended = start + interval.mul_f64(n as f64);
                    tokio::time::sleep_until(intended.into()).await;
                    let reply = send_request(&mut sender, requests(n)).await;
                    record(&mut report, reply, check, intended.elapsed());
                    n += connections;
                }
                report
            })
        })
        .collect();
    collect(tasks, start).await
}

/// Sends `requests` over `connections` keep-alive connections as fast as
/// replies come back, for `duration`: the most the server sustains.
pub async fn closed_loop(
    https: &HttpsClient,
    connections: u64,
    duration: Duration,
    requests: Requests,
    check: Check,
) -> LoadReport {
    let connections = connections.max(1);
    let start = Instant::now();
    let end = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (https, requests) = (https.clone(), Arc::clone(&requests));
            tokio::spawn(async move {
                let mut report = LoadReport::default();
                let Some(mut sender) = connect(&https, &mut report).await else {
                    return report;
                };
                let mut n = c;
                while Instant::now() < end {
                    let request = requests(n);
                    let sent = Instant::now();
                    let reply = send_request(&mut sender, request).await;
                    record(&mut report, reply, check, sent.elapsed());
                    n += connections;
                }
                report
            })
        })
        .collect();
    collect(tasks, start).await
}

/// A keep-alive connection, or the failure counted in `report`.
async fn connect(https: &HttpsClient, report: &mut LoadReport) -> Option<SendRequest<Full<Bytes>>> {
    match https.connect().await {
        Ok(sender) => Some(sender),
        Err(error) => {
            report.failed += 1;
            report.failures.push(format!("could not connect: {error}"));
            None
        }
    }
}

async fn send_request(
    sender: &mut SendRequest<Full<Bytes>>,
    request: LoadRequest,
) -> Result<HttpsReply, crate::HarnessError> {
    send(
        sender,
        request.method,
        &request.path,
        request.bearer.as_deref(),
        request.body,
    )
    .await
}

fn record(
    report: &mut LoadReport,
    reply: Result<HttpsReply, crate::HarnessError>,
    check: Check,
    latency: Duration,
) {
    match reply {
        Ok(reply) if check(&reply) => report.latencies.push(latency),
        Ok(reply) => {
            report.failed += 1;
            if report.failures.len() < 3 {
                report.failures.push(format!(
                    "{}: {}",
                    reply.status,
                    String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
                ));
            }
        }
        Err(error) => {
            report.failed += 1;
            if report.failures.len() < 3 {
                report.failures.push(error.to_string());
            }
        }
    }
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<LoadReport>>, start: Instant) -> LoadReport {
    let mut report = LoadReport::default();
    for task in tasks {
        match task.await {
            Ok(part) => report.merge(part),
            Err(error) => {
                report.failed += 1;
                report.failures.push(format!("load task: {error}"));
            }
        }
    }
    report.wall = start.elapsed();
    report.latencies.sort();
    report
}
