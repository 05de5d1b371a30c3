#!/usr/bin/env node
// A Node.js caller of the callback executor: runs one callback with
// CallbackExecutorService.Execute, then registers a job and publishes an event that fires
// its callback (TriggerService.RegisterJob, TriggerService.PublishEvent with wait=true).
//
// It loads the .proto files of this repository at run time (no generated code), which is
// how any language without our stubs can call the executor.
//
//   npm install
//   node client.js HOST:PORT [--job ID] [--token TOKEN] [--ca CA.pem [--cert C.pem --key K.pem]]
//
// Prints one JSON object per call on stdout; exits 0 when both calls succeeded and the
// callbacks they ran SUCCEEDED, 1 otherwise. The token defaults to $CBEXEC_AUTH_TOKEN.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const crypto = require("node:crypto");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = process.env.CBEXEC_PROTO_ROOT || path.resolve(__dirname, "..", "..", "proto");

function parseArgs(argv) {
  const args = { address: argv[0], job: "1", token: process.env.CBEXEC_AUTH_TOKEN || "" };
  for (let i = 1; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!["job", "token", "ca", "cert", "key"].includes(key) || argv[i + 1] === undefined) {
      throw new Error(`unknown or incomplete option ${argv[i]}`);
    }
    args[key] = argv[i + 1];
  }
  if (!args.address || args.address.startsWith("--")) {
    throw new Error("usage: node client.js HOST:PORT [--job ID] [--token T] [--ca CA.pem [--cert C --key K]]");
  }
  return args;
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

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const { CallbackExecutorService, TriggerService } = loadServices();
  // Two services on the executor's one port; the clients share one channel's settings.
  const executor = new CallbackExecutorService(args.address, credentials(args));
  const triggers = new TriggerService(args.address, credentials(args));
  const metadata = new grpc.Metadata();
  if (args.token) metadata.set("authorization", `Bearer ${args.token}`);
  let ok = true;
  try {
    const executed = await call(executor, "Execute", {
      invocation_id: crypto.randomUUID(),
      callback: { language: "python", code: "print('hello from node, job', qb.jobid())" },
      context: { job: { id: args.job, name: "node-client", user: "node" } },
    }, metadata);
    ok = ok && executed.outcome === "OUTCOME_SUCCEEDED";
    console.log(JSON.stringify({ call: "Execute", invocation_id: executed.invocation_id,
      outcome: executed.outcome, stdout: executed.stdout }));

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
    ok = ok && fired.length > 0 && fired.every((f) => f.outcome === "OUTCOME_SUCCEEDED");
    console.log(JSON.stringify({ call: "PublishEvent", duplicate: published.duplicate, fired }));
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
