//! A QMP client (QEMU's JSON control protocol) on the socket pair QEMU
//! inherits: capability negotiation, then commands, one at a time.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

/// One QMP connection.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Read QEMU's greeting on `stream` and leave capability negotiation
    /// mode. QEMU greets as soon as it has parsed its options.
    pub fn connect(stream: UnixStream) -> Result<Qmp, String> {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| format!("QMP: {e}"))?;
        let writer = stream.try_clone().map_err(|e| format!("QMP: {e}"))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QMP: expected a greeting, got {greeting}"));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP: QEMU closed its monitor (it exited; see qemu.log)".into()),
            Ok(_) => {
                serde_json::from_str(&line).map_err(|e| format!("QMP: bad reply {line:?}: {e}"))
            }
            Err(e) => Err(format!("QMP: {e}")),
        }
    }

    /// Run `command` with `arguments`; its `return` value, or its error.
    /// Events that arrive meanwhile are skipped.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let mut req = json!({ "execute": command });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            req["arguments"] = arguments;
        }
        let mut line = req.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| format!("QMP: {e}"))?;
        loop {
            let reply = self.read()?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(format!(
                    "QMP {command}: {}",
                    err.get("desc").and_then(Value::as_str).unwrap_or("error")
                ));
            }
            return Err(format!("QMP {command}: unexpected reply {reply}"));
        }
    }

    /// The host thread id of each vCPU, in vCPU order.
    pub fn vcpu_threads(&mut self) -> Result<Vec<u32>, String> {
        parse_vcpu_threads(&self.execute("query-cpus-fast", json!({}))?)
    }
}

/// `query-cpus-fast`'s answer as thread ids ordered by `cpu-index`.
fn parse_vcpu_threads(ret: &Value) -> Result<Vec<u32>, String> {
    let cpus = ret
        .as_array()
        .ok_or_else(|| format!("QMP query-cpus-fast: not a list: {ret}"))?;
    let mut out = Vec::new();
    for cpu in cpus {
        let index = cpu.get("cpu-index").and_then(Value::as_u64);
        let tid = cpu.get("thread-id").and_then(Value::as_u64);
        match (index, tid) {
            (Some(i), Some(t)) => out.push((i, t as u32)),
            _ => return Err(format!("QMP query-cpus-fast: odd entry {cpu}")),
        }
    }
    out.sort_unstable();
    Ok(out.into_iter().map(|(_, t)| t).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_threads_come_in_cpu_order() {
        let ret = json!([
            {"thread-id": 13056, "props": {"core-id": 1}, "cpu-index": 1, "target": "x86_64"},
            {"thread-id": 13055, "props": {"core-id": 0}, "cpu-index": 0, "target": "x86_64"}
        ]);
        assert_eq!(parse_vcpu_threads(&ret).unwrap(), vec![13055, 13056]);
        assert!(parse_vcpu_threads(&json!({})).is_err());
        assert!(parse_vcpu_threads(&json!([{"cpu-index": 0}])).is_err());
    }

    #[test]
    fn commands_skip_events_and_report_errors() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            theirs.write_all(b"{\"QMP\": {\"version\": {}}}\n").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"));
            theirs.write_all(b"{\"return\": {}}\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            theirs
                .write_all(b"{\"event\": \"RESUME\"}\n{\"return\": [{\"cpu-index\": 0, \"thread-id\": 7}]}\n")
                .unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            theirs
                .write_all(
                    b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such thing\"}}\n",
                )
                .unwrap();
        });
        let mut qmp = Qmp::connect(ours).unwrap();
        assert_eq!(qmp.vcpu_threads().unwrap(), vec![7]);
        let e = qmp.execute("nonsense", json!({})).unwrap_err();
        assert_eq!(e, "QMP nonsense: no such thing");
        server.join().unwrap();
    }
}
