#!/usr/bin/env node
// A Node.js caller of the callback executor: runs one callback with
// CallbackExecutorService.Execute, then registers a job and publishes an event that fires
// its callback (TriggerService.RegisterJob, TriggerService.PublishEvent with wait=true).
//
// It loads the .proto files of this repository at run time (no generated code), which is
// how any language without our stubs can call the executor.
//
//   npm install
//   node client.js ADDRESS [--job ID] [--token TOKEN] [--ca CA.pem [--cert C.pem --key K.pem]]
//                  [--executes N] [--no-events]
//
// ADDRESS is one executor's HOST:PORT, or a fleet: IP:PORT,IP:PORT,... (all IPv4 or all
// IPv6 in brackets) or dns:///NAME:PORT (every record of the name). A fleet's channel
// balances the calls round-robin (grpc-js's round_robin policy, chosen by the service
// config) over the executors it can connect to. grpc-js has no client-side health
// checking: an executor that is down is skipped, but one that is up and NOT_SERVING
// (stopping, or its storage failing) still gets its share and answers UNAVAILABLE.
// --executes runs Execute N times (default 1); --no-events skips RegisterJob and
// PublishEvent, for executors that do not share one trigger store.
//
// Prints one JSON object per call on stdout; exits 0 when every call succeeded and the
// callbacks they ran SUCCEEDED, 1 otherwise. The token defaults to $CBEXEC_AUTH_TOKEN; it is
// sent without surrounding whitespace, as the Python client and cbexec send it.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const crypto = require("node:crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = process.env.CBEXEC_PROTO_ROOT || path.resolve(__dirname, "..", "..", "proto");

const USAGE = "usage: node client.js ADDRESS [--job ID] [--token T] [--ca CA.pem [--cert C --key K]]"
  + " [--executes N] [--no-events]";

function parseArgs(argv) {
  const args = {
    address: argv[0], job: "1", token: process.env.CBEXEC_AUTH_TOKEN || "", executes: "1",
    events: true,
  };
  for (let i = 1; i < argv.length; i += 2) {
    if (argv[i] === "--no-events") {
      args.events = false;
      i -= 1;
      continue;
    }
    const key = argv[i].replace(/^--/, "");
    if (!["job", "token", "ca", "cert", "key", "executes"].includes(key) || argv[i + 1] === undefined) {
      throw new Error(`unknown or incomplete option ${argv[i]}`);
    }
    args[key] = argv[i + 1];
  }
  if (!args.address || args.address.startsWith("--")) throw new Error(USAGE);
  args.token = cleanToken(args.token);
  if (!/^[1-9][0-9]*$/.test(args.executes)) throw new Error(`--executes: expected a count, got ${args.executes}`);
  // A whole number the wire's uint64 carries as given (the executor says which ids it takes).
  if (!/^[1-9][0-9]{0,18}$/.test(args.job) || BigInt(args.job) > 2n ** 63n - 1n) {
    throw new Error(`--job: expected a job id from 1 to ${2n ** 63n - 1n}, got ${args.job}`);
  }
  return args;
}

// Python's str.isspace() characters: the token is stripped as the Python client and cbexec
// strip it (a token file's newline is not the token).
const SPACE = "[\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const SURROUNDING_SPACE = new RegExp(`^${SPACE}+|${SPACE}+$`, "g");

// The token as sent; inside it, what gRPC metadata cannot carry (printable ASCII only) is
// refused by its position, never shown (grpc-js's own error printed the whole secret).
function cleanToken(token) {
  const clean = token.replace(SURROUNDING_SPACE, "");
  const bad = [...clean].findIndex((c) => c < " " || c > "~");
  if (bad >= 0) {
    throw new Error(`--token: character ${bad + 1} is not printable ASCII, and gRPC metadata`
      + " carries nothing else");
  }
  return clean;
}

// Pings every 10 s (5 s to answer), with or without a call, as the Python client sends
// and the executor accepts: a frozen executor's connection is dropped, and a fleet's
// round robin moves on, instead of calls waiting on it until their deadline.
const KEEPALIVE = {
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
  "grpc.keepalive_permit_without_calls": 1,
};

// One executor as given; a fleet as a gRPC target and the service config that balances it.
function fleetTarget(address) {
  const roundRobin = JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] });
  const fleet = { ...KEEPALIVE, "grpc.service_config": roundRobin };
  if (/^(ipv4|ipv6):/.test(address) || (address.startsWith("dns:") && !address.includes(","))) {
    return { target: address, options: fleet };
  }
  const parts = address.split(",").map((part) => part.trim()).filter(Boolean);
  if (parts.length === 1) return { target: parts[0], options: { ...KEEPALIVE } };
  const v4 = parts.every((part) => /^\d{1,3}(\.\d{1,3}){3}:\d+$/.test(part));
  const v6 = parts.every((part) => /^\[[0-9A-Fa-f:.]+\]:\d+$/.test(part));
  if (!v4 && !v6) {
    throw new Error(`a list of executors takes IP:PORT entries, all IPv4 or all [IPv6]:PORT; `
      + `name a fleet by a host name as dns:///NAME:PORT (got ${address})`);
  }
  return { target: `${v4 ? "ipv4" : "ipv6"}:${parts.join(",")}`, options: fleet };
}

function loadServices() {
  const definition = protoLoader.loadSync("qbcallback/v1/executor.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names exactly as in the .proto (job_id, invocation_id)
    longs: String, // uint64 ids as decimal strings: no precision loss above 2^53
    enums: String, // OUTCOME_SUCCEEDED rather than 1
    defaults: true,
    oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(definition).qbcallback.v1;
  return { CallbackExecutorService: v1.CallbackExecutorService, TriggerService: v1.TriggerService };
}

function credentials(args) {
  if (!args.ca) return grpc.credentials.createInsecure();
  const read = (file) => (file ? fs.readFileSync(file) : null);
  return grpc.credentials.createSsl(read(args.ca), read(args.key), read(args.cert));
}

function call(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 60_000);
    client[method](request, metadata, { deadline }, (err, response) =>
      err ? reject(Object.assign(err, { method })) : resolve(response));
  });
}

// Register a job with a callback, publish the event that fires it; true when it SUCCEEDED.
async function registerAndPublish(triggers, args, metadata) {
  const registered = await call(triggers, "RegisterJob", {
    job: {
      id: args.job, name: "node-client", user: "node", pgrp: args.job,
      callbacks: [{ triggers: "complete-job-self", language: "python",
        code: "print('fired by a node event for job', qb.jobid())" }],
    },
  }, metadata);
  console.log(JSON.stringify({ call: "RegisterJob", callbacks: registered.callbacks.length }));

  const published = await call(triggers, "PublishEvent", {
    name: "complete", type: "job", job_id: args.job, event_id: crypto.randomUUID(), wait: true,
  }, metadata);
  const fired = published.fired.map((f) => ({
    callback_id: f.callback_id, triggers: f.triggers, invocation_id: f.invocation_id,
    outcome: f.result ? f.result.outcome : null, stdout: f.result ? f.result.stdout : null,
  }));
  const ok = fired.length > 0 && fired.every((f) => f.outcome === "OUTCOME_SUCCEEDED");
  console.log(JSON.stringify({ call: "PublishEvent", duplicate: published.duplicate, fired }));
  if (fired.length === 0) {
    console.error("PublishEvent fired nothing: the executor that took the event does not know"
      + " the job (executors of a fleet share one store; separate executors do not)");
  }
  return ok;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { CallbackExecutorService, TriggerService } = loadServices();
  const { target, options } = fleetTarget(args.address);
  // Two services on the executor's one port; the clients share one channel's settings.
  const executor = new CallbackExecutorService(target, credentials(args), options);
  const triggers = new TriggerService(target, credentials(args), options);
  const metadata = new grpc.Metadata();
  if (args.token) metadata.set("authorization", `Bearer ${args.token}`);
  let ok = true;
  try {
    for (let n = 0; n < Number(args.executes); n += 1) {
      const executed = await call(executor, "Execute", {
        invocation_id: crypto.randomUUID(),
        callback: { language: "python", code: "print('hello from node, job', qb.jobid())" },
        context: { job: { id: args.job, name: "node-client", user: "node" } },
      }, metadata);
      ok = ok && executed.outcome === "OUTCOME_SUCCEEDED";
      console.log(JSON.stringify({ call: "Execute", invocation_id: executed.invocation_id,
        outcome: executed.outcome, stdout: executed.stdout }));
    }
    if (args.events) ok = (await registerAndPublish(triggers, args, metadata)) && ok;
  } catch (err) {
    ok = false;
    const code = Object.keys(grpc.status).find((name) => grpc.status[name] === err.code);
    console.error(`${err.method || "client"} failed: ${code || err.code}: ${err.details || err.message}`);
  } finally {
    executor.close();
    triggers.close();
  }
  process.exitCode = ok ? 0 : 1;
}

main().catch((err) => {
  console.error(err.message);
  process.exitCode = 2;
});
