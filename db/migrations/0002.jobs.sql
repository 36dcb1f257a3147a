-- depends: 0001.broker
-- Job history (what the admin UI shows), the actor registry, and the SQL enqueue API.
-- The broker deletes a message when it is acknowledged; studio.job is where jobs live
-- until the retention period removes completed ones.
CREATE SCHEMA IF NOT EXISTS studio;

CREATE TYPE studio.job_status AS ENUM ('pending', 'active', 'completed', 'failed');

-- Filled by `studio migrate` and at worker boot, so SQL producers can check actor names.
CREATE TABLE studio.actor (
    actor_name text PRIMARY KEY,
    queue_name text NOT NULL,
    max_retries integer NOT NULL,
    time_limit_ms bigint NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE studio.job (
    message_id uuid PRIMARY KEY,
    actor_name text NOT NULL,
    queue_name text NOT NULL,
    status studio.job_status NOT NULL DEFAULT 'pending',
    message jsonb NOT NULL,
    dedup_key text,
    attempts integer NOT NULL DEFAULT 0,
    max_retries integer,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    run_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    error_type text,
    error_message text,
    error_traceback text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- At most one live (pending or active) job per de-duplication key.
CREATE UNIQUE INDEX job_live_dedup_key_idx ON studio.job (dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('pending', 'active');
CREATE INDEX job_status_run_at_idx ON studio.job (status, run_at);
CREATE INDEX job_actor_enqueued_idx ON studio.job (actor_name, enqueued_at);
CREATE INDEX job_completed_finished_idx ON studio.job (finished_at) WHERE status = 'completed';

CREATE TABLE studio.job_attempt (
    message_id uuid NOT NULL REFERENCES studio.job ON DELETE CASCADE,
    attempt integer NOT NULL,
    worker text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    duration_ms double precision
        GENERATED ALWAYS AS (extract(epoch FROM finished_at - started_at) * 1000) STORED,
    outcome text CHECK (outcome IN ('completed', 'retrying', 'failed', 'interrupted')),
    error_type text,
    error_message text,
    error_traceback text,
    PRIMARY KEY (message_id, attempt)
);

-- Enqueue a Dramatiq message (as Message.asdict() encodes it) and record its job.
-- A delayed message already names its delay queue ("<queue>.DQ") and carries its eta.
-- With options.dedup_key set and a live job holding that key, nothing is added and the
-- live job's id is returned. Workers are woken by NOTIFY, which PostgreSQL delivers
-- only when the caller's transaction commits.
CREATE FUNCTION studio.enqueue_message(message jsonb, delay_ms bigint DEFAULT 0)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    new_id uuid := (message ->> 'message_id')::uuid;
    queue text := message ->> 'queue_name';
    key text := message -> 'options' ->> 'dedup_key';
    due timestamptz := now() + make_interval(secs => greatest(delay_ms, 0) / 1000.0);
    live_id uuid;
BEGIN
    UPDATE studio.job
       SET status = 'pending', message = enqueue_message.message, run_at = due,
           finished_at = NULL, updated_at = now()
     WHERE job.message_id = new_id;
    IF NOT FOUND THEN
        INSERT INTO studio.job (message_id, actor_name, queue_name, message, dedup_key, run_at)
        VALUES (new_id, message ->> 'actor_name', regexp_replace(queue, '\.DQ$', ''),
                enqueue_message.message, key, due)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            SELECT job.message_id INTO live_id FROM studio.job
             WHERE job.dedup_key = key AND job.status IN ('pending', 'active');
            IF live_id IS NULL THEN
                RAISE EXCEPTION 'job % could not be enqueued: its id is taken', new_id;
            END IF;
            RETURN live_id;
        END IF;
    END IF;
    INSERT INTO dramatiq.queue (queue_name, message_id, state, message, available_at)
    VALUES (queue, new_id, 'queued', enqueue_message.message, due)
    ON CONFLICT (message_id) DO UPDATE
        SET state = 'queued', message = EXCLUDED.message, queue_name = EXCLUDED.queue_name,
            available_at = EXCLUDED.available_at, worker_id = NULL, consumed_at = NULL,
            mtime = now();
    PERFORM pg_notify('dramatiq.' || queue || '.enqueue', '');
    RETURN new_id;
END $$;

-- Enqueue a job from any language, in the caller's transaction (Graphile Worker's add_job):
--   SELECT studio.add_job('send-email', '{"experiment_id": 42}');
-- The actor must be registered (see studio.actor); its queue is used unless one is given.
CREATE FUNCTION studio.add_job(
    actor text,
    kwargs jsonb DEFAULT '{}',
    queue text DEFAULT NULL,
    delay_ms bigint DEFAULT 0,
    dedup_key text DEFAULT NULL,
    max_retries integer DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    registered studio.actor;
    target text;
    now_ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    options jsonb := '{}';
BEGIN
    SELECT * INTO registered FROM studio.actor AS a WHERE a.actor_name = add_job.actor;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown actor "%"', add_job.actor
            USING HINT = 'Known actors: ' || coalesce(
                (SELECT string_agg(actor_name, ', ' ORDER BY actor_name) FROM studio.actor),
                'none (run studio migrate)');
    END IF;
    IF jsonb_typeof(kwargs) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'kwargs must be a JSON object, got %', coalesce(jsonb_typeof(kwargs), 'NULL');
    END IF;
    target := coalesce(queue, registered.queue_name);
    IF delay_ms > 0 THEN
        target := target || '.DQ';
        options := jsonb_build_object('eta', now_ms + delay_ms);
    END IF;
    IF dedup_key IS NOT NULL THEN
        options := options || jsonb_build_object('dedup_key', dedup_key);
    END IF;
    IF max_retries IS NOT NULL THEN
        options := options || jsonb_build_object('max_retries', max_retries);
    END IF;
    RETURN studio.enqueue_message(
        jsonb_build_object(
            'queue_name', target, 'actor_name', add_job.actor, 'args', '[]'::jsonb,
            'kwargs', kwargs, 'options', options,
            'message_id', gen_random_uuid()::text, 'message_timestamp', now_ms),
        delay_ms);
END $$;
