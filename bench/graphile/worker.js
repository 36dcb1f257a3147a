// graphile-worker side of bench/broker.py, run with NODE_PATH pointing at the npm cache:
//   node worker.js migrate                                   create the graphile_worker schema
//   node worker.js run CONCURRENCY POLL_INTERVAL_MS          run the `bench-noop` task until SIGTERM
"use strict";

const { Logger, run, runMigrations } = require("graphile-worker");

// graphile-worker deletes a job when it completes, so the task records its own times.
// Per job, graphile-worker commits get_job (the claim) and complete_job (a DELETE); the task
// adds one INSERT as it starts and one UPDATE as it ends. Per job, ours commits a claim (of a
// batch of up to WORKER_CONCURRENCY jobs), the JobHistory middleware's writes to studio.job and
// studio.job_attempt before and after the actor, and the ack (a DELETE). So each side commits
// about four transactions per job, two of them bookkeeping writes stamped with clock_timestamp().
// created_at is read from the job row (still there while the job runs) because the JS Date in
// helpers.job keeps only milliseconds.
const START = `
INSERT INTO bench.graphile_job (job_id, created_at, started_at)
SELECT id, created_at, clock_timestamp() FROM graphile_worker._private_jobs WHERE id = $1`;
const FINISH = `
UPDATE bench.graphile_job SET finished_at = clock_timestamp() WHERE job_id = $1`;

async function benchNoop(_payload, helpers) {
  await helpers.query(START, [helpers.job.id]);
  await helpers.query(FINISH, [helpers.job.id]);
}

// graphile-worker logs one info line per completed job; Dramatiq logs none, so only warnings
// and errors are kept to leave logging out of the comparison.
const quietLogger = new Logger(() => (level, message) => {
  if (level === "warning" || level === "error") {
    console.error(`[graphile-worker] ${level}: ${message}`);
  }
});

function sharedOptions() {
  if (!process.env.DATABASE_URL) {
    throw new Error("DATABASE_URL is not set");
  }
  return { connectionString: process.env.DATABASE_URL, logger: quietLogger };
}

async function runWorker(concurrency, pollIntervalMs) {
  const runner = await run({
    ...sharedOptions(),
    concurrency,
    pollInterval: pollIntervalMs,
    taskList: { "bench-noop": benchNoop },
  });
  console.log(`graphile-worker running: concurrency ${concurrency}, poll ${pollIntervalMs} ms`);
  await runner.promise; // graphile-worker stops gracefully on SIGTERM
}

async function main(argv) {
  const [command, concurrency, pollIntervalMs] = argv;
  if (command === "migrate") {
    await runMigrations(sharedOptions());
  } else if (command === "run" && Number(concurrency) > 0 && Number(pollIntervalMs) > 0) {
    await runWorker(Number(concurrency), Number(pollIntervalMs));
  } else {
    throw new Error("usage: node worker.js migrate | run CONCURRENCY POLL_INTERVAL_MS");
  }
}

main(process.argv.slice(2)).catch((error) => {
  console.error(error);
  process.exit(1);
});
