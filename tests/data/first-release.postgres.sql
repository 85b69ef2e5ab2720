-- A job store made by the first release (M1, commit cdf1d4b) on PostgreSQL; schema first_release is renamed by the test.
CREATE TABLE first_release.artifacts (
    id integer NOT NULL,
    job_id character varying(36) NOT NULL,
    step_id integer,
    item_index integer NOT NULL,
    seed bigint NOT NULL,
    width integer NOT NULL,
    height integer NOT NULL,
    format character varying(8) NOT NULL,
    s3_key character varying(512) NOT NULL,
    size_bytes integer NOT NULL,
    sha256 character varying(64) NOT NULL,
    created_at timestamp with time zone NOT NULL
);
CREATE SEQUENCE first_release.artifacts_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE first_release.artifacts_id_seq OWNED BY first_release.artifacts.id;
CREATE TABLE first_release.events (
    id integer NOT NULL,
    job_id character varying(36) NOT NULL,
    at timestamp with time zone NOT NULL,
    kind character varying(16) NOT NULL,
    payload json NOT NULL
);
CREATE SEQUENCE first_release.events_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE first_release.events_id_seq OWNED BY first_release.events.id;
CREATE TABLE first_release.jobs (
    id character varying(36) NOT NULL,
    type character varying(32) NOT NULL,
    status character varying(16) NOT NULL,
    params json NOT NULL,
    idempotency_key_hash character varying(64),
    request_hash character varying(64),
    correlation_id character varying(255),
    error_code character varying(64),
    error_message character varying,
    error_details json,
    attempts integer NOT NULL,
    worker_id character varying(255),
    heartbeat_at timestamp with time zone,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone
);
CREATE TABLE first_release.steps (
    id integer NOT NULL,
    job_id character varying(36) NOT NULL,
    name character varying(32) NOT NULL,
    status character varying(16) NOT NULL,
    progress_current integer NOT NULL,
    progress_total integer NOT NULL,
    seed bigint,
    started_at timestamp with time zone,
    finished_at timestamp with time zone
);
CREATE SEQUENCE first_release.steps_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE first_release.steps_id_seq OWNED BY first_release.steps.id;
CREATE TABLE first_release.workers (
    id character varying(255) NOT NULL,
    hostname character varying(255) NOT NULL,
    pid integer NOT NULL,
    started_at timestamp with time zone NOT NULL,
    heartbeat_at timestamp with time zone NOT NULL,
    stopped_at timestamp with time zone
);
ALTER TABLE ONLY first_release.artifacts ALTER COLUMN id SET DEFAULT nextval('first_release.artifacts_id_seq'::regclass);
ALTER TABLE ONLY first_release.events ALTER COLUMN id SET DEFAULT nextval('first_release.events_id_seq'::regclass);
ALTER TABLE ONLY first_release.steps ALTER COLUMN id SET DEFAULT nextval('first_release.steps_id_seq'::regclass);
INSERT INTO first_release.artifacts VALUES (1, 'e1317289-b6c2-4e29-9a13-0ad35830dacd', 1, 0, 7, 64, 64, 'png', 'dreamforge/default/jobs/e1317289-b6c2-4e29-9a13-0ad35830dacd/generate/20261128T091441Z_0_64x64_7.png', 4168, '477a72705ce7bb5e64ada4f2c79e20a10cc2749ddf266066dab9fda184b39241', '2026-11-28 09:14:41.41146+00');
INSERT INTO first_release.artifacts VALUES (2, '3a709cbd-5cda-40f5-b244-e97bbcff7759', 2, 0, 2675939543, 64, 64, 'webp', 'dreamforge/default/jobs/3a709cbd-5cda-40f5-b244-e97bbcff7759/generate/20261128T091443Z_0_64x64_2675939543.webp', 1194, '084eeb8624d349f6dc9d602a75da5ec0f9b0c044c7f7feb2d4cf85473c53084a', '2026-11-28 09:14:43.048408+00');
INSERT INTO first_release.events VALUES (1, 'e1317289-b6c2-4e29-9a13-0ad35830dacd', '2026-11-28 09:14:41.112571+00', 'status', '{"status": "queued"}');
INSERT INTO first_release.events VALUES (2, 'e1317289-b6c2-4e29-9a13-0ad35830dacd', '2026-11-28 09:14:41.316263+00', 'status', '{"status": "running", "worker_id": "cli:vm:31873:5e1293", "attempt": 1}');
INSERT INTO first_release.events VALUES (3, 'e1317289-b6c2-4e29-9a13-0ad35830dacd', '2026-11-28 09:14:41.34816+00', 'progress', '{"current": 1, "total": 3}');
INSERT INTO first_release.events VALUES (4, 'e1317289-b6c2-4e29-9a13-0ad35830dacd', '2026-11-28 09:14:41.373715+00', 'progress', '{"current": 2, "total": 3}');
INSERT INTO first_release.events VALUES (5, 'e1317289-b6c2-4e29-9a13-0ad35830dacd', '2026-11-28 09:14:41.397078+00', 'progress', '{"current": 3, "total": 3}');
INSERT INTO first_release.events VALUES (6, 'e1317289-b6c2-4e29-9a13-0ad35830dacd', '2026-11-28 09:14:41.41146+00', 'status', '{"status": "succeeded", "s3_key": "dreamforge/default/jobs/e1317289-b6c2-4e29-9a13-0ad35830dacd/generate/20261128T091441Z_0_64x64_7.png", "timings": {"generate_s": 0.0737, "encode_s": 0.0081, "store_s": 0.0027}}');
INSERT INTO first_release.events VALUES (7, '3a709cbd-5cda-40f5-b244-e97bbcff7759', '2026-11-28 09:14:42.824313+00', 'status', '{"status": "queued"}');
INSERT INTO first_release.events VALUES (8, '3a709cbd-5cda-40f5-b244-e97bbcff7759', '2026-11-28 09:14:42.951369+00', 'status', '{"status": "running", "worker_id": "cli:vm:31893:c39e0c", "attempt": 1}');
INSERT INTO first_release.events VALUES (9, '3a709cbd-5cda-40f5-b244-e97bbcff7759', '2026-11-28 09:14:42.957648+00', 'log', '{"message": "seed chosen", "seed": 2675939543}');
INSERT INTO first_release.events VALUES (10, '3a709cbd-5cda-40f5-b244-e97bbcff7759', '2026-11-28 09:14:42.98458+00', 'progress', '{"current": 1, "total": 2}');
INSERT INTO first_release.events VALUES (11, '3a709cbd-5cda-40f5-b244-e97bbcff7759', '2026-11-28 09:14:43.009186+00', 'progress', '{"current": 2, "total": 2}');
INSERT INTO first_release.events VALUES (12, '3a709cbd-5cda-40f5-b244-e97bbcff7759', '2026-11-28 09:14:43.048408+00', 'status', '{"status": "succeeded", "s3_key": "dreamforge/default/jobs/3a709cbd-5cda-40f5-b244-e97bbcff7759/generate/20261128T091443Z_0_64x64_2675939543.webp", "timings": {"generate_s": 0.0489, "encode_s": 0.0339, "store_s": 0.0019}}');
INSERT INTO first_release.events VALUES (13, 'd8a4538f-7ab5-47c6-abd8-1292df63993a', '2026-11-28 09:14:44.779946+00', 'status', '{"status": "queued"}');
INSERT INTO first_release.events VALUES (14, 'd8a4538f-7ab5-47c6-abd8-1292df63993a', '2026-11-28 09:14:44.951683+00', 'status', '{"status": "running", "worker_id": "cli:vm:31908:0e73b6", "attempt": 1}');
INSERT INTO first_release.events VALUES (15, 'd8a4538f-7ab5-47c6-abd8-1292df63993a', '2026-11-28 09:14:44.960226+00', 'log', '{"message": "seed chosen", "seed": 1722106126}');
INSERT INTO first_release.events VALUES (16, 'd8a4538f-7ab5-47c6-abd8-1292df63993a', '2026-11-28 09:14:44.96593+00', 'error', '{"code": "model_not_found", "message": "no SDXL checkpoint at /nonexistent.safetensors (chosen by DF_GENERATE_MODEL_PATH); put a .safetensors file or a Diffusers folder there, point DF_GENERATE_MODEL_PATH (or DF_MODELS_ROOT + DF_DEFAULT_MODEL_DIR) at one, or set DF_FAKE_RUNNER=1 for the Pillow runner"}');
INSERT INTO first_release.events VALUES (17, 'd8a4538f-7ab5-47c6-abd8-1292df63993a', '2026-11-28 09:14:44.96593+00', 'status', '{"status": "failed", "code": "model_not_found"}');
INSERT INTO first_release.events VALUES (18, 'ad3bc2ee-3d14-4f3f-81fd-0910b767f04e', '2026-11-28 09:14:47.484015+00', 'status', '{"status": "queued"}');
INSERT INTO first_release.jobs VALUES ('e1317289-b6c2-4e29-9a13-0ad35830dacd', 'generate', 'succeeded', '{"type": "generate", "prompt": "a lighthouse", "negative_prompt": null, "width": 64, "height": 64, "steps": 3, "guidance": 7.0, "seed": 7, "format": "png", "count": 1}', NULL, NULL, NULL, NULL, NULL, NULL, 1, 'cli:vm:31873:5e1293', NULL, '2026-11-28 09:14:41.112571+00', '2026-11-28 09:14:41.41146+00', '2026-11-28 09:14:41.316263+00', '2026-11-28 09:14:41.41146+00');
INSERT INTO first_release.jobs VALUES ('3a709cbd-5cda-40f5-b244-e97bbcff7759', 'generate', 'succeeded', '{"type": "generate", "prompt": "a forest", "negative_prompt": null, "width": 64, "height": 64, "steps": 2, "guidance": 7.0, "seed": 2675939543, "format": "webp", "count": 1}', NULL, NULL, NULL, NULL, NULL, NULL, 1, 'cli:vm:31893:c39e0c', NULL, '2026-11-28 09:14:42.824313+00', '2026-11-28 09:14:43.048408+00', '2026-11-28 09:14:42.951369+00', '2026-11-28 09:14:43.048408+00');
INSERT INTO first_release.jobs VALUES ('d8a4538f-7ab5-47c6-abd8-1292df63993a', 'generate', 'failed', '{"type": "generate", "prompt": "no model", "negative_prompt": null, "width": 64, "height": 64, "steps": 30, "guidance": 7.0, "seed": 1722106126, "format": "png", "count": 1}', NULL, NULL, NULL, 'model_not_found', 'no SDXL checkpoint at /nonexistent.safetensors (chosen by DF_GENERATE_MODEL_PATH); put a .safetensors file or a Diffusers folder there, point DF_GENERATE_MODEL_PATH (or DF_MODELS_ROOT + DF_DEFAULT_MODEL_DIR) at one, or set DF_FAKE_RUNNER=1 for the Pillow runner', '{"path": "/nonexistent.safetensors", "chosen_by": "DF_GENERATE_MODEL_PATH"}', 1, 'cli:vm:31908:0e73b6', NULL, '2026-11-28 09:14:44.779946+00', '2026-11-28 09:14:44.96593+00', '2026-11-28 09:14:44.951683+00', '2026-11-28 09:14:44.96593+00');
INSERT INTO first_release.jobs VALUES ('ad3bc2ee-3d14-4f3f-81fd-0910b767f04e', 'generate', 'queued', '{"type": "generate", "prompt": "still queued", "negative_prompt": null, "width": 64, "height": 64, "steps": 30, "guidance": 7.0, "seed": null, "format": "png", "count": 1}', NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL, '2026-11-28 09:14:47.484015+00', '2026-11-28 09:14:47.484015+00', NULL, NULL);
INSERT INTO first_release.steps VALUES (1, 'e1317289-b6c2-4e29-9a13-0ad35830dacd', 'generate', 'succeeded', 3, 3, NULL, '2026-11-28 09:14:41.316263+00', '2026-11-28 09:14:41.41146+00');
INSERT INTO first_release.steps VALUES (2, '3a709cbd-5cda-40f5-b244-e97bbcff7759', 'generate', 'succeeded', 2, 2, 2675939543, '2026-11-28 09:14:42.951369+00', '2026-11-28 09:14:43.048408+00');
INSERT INTO first_release.steps VALUES (3, 'd8a4538f-7ab5-47c6-abd8-1292df63993a', 'generate', 'failed', 0, 30, 1722106126, '2026-11-28 09:14:44.951683+00', '2026-11-28 09:14:44.96593+00');
INSERT INTO first_release.steps VALUES (4, 'ad3bc2ee-3d14-4f3f-81fd-0910b767f04e', 'generate', 'queued', 0, 30, NULL, NULL, NULL);
SELECT pg_catalog.setval('first_release.artifacts_id_seq', 2, true);
SELECT pg_catalog.setval('first_release.events_id_seq', 18, true);
SELECT pg_catalog.setval('first_release.steps_id_seq', 4, true);
ALTER TABLE ONLY first_release.artifacts
    ADD CONSTRAINT artifacts_pkey PRIMARY KEY (id);
ALTER TABLE ONLY first_release.artifacts
    ADD CONSTRAINT artifacts_s3_key_key UNIQUE (s3_key);
ALTER TABLE ONLY first_release.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id);
ALTER TABLE ONLY first_release.jobs
    ADD CONSTRAINT jobs_idempotency_key_hash_key UNIQUE (idempotency_key_hash);
ALTER TABLE ONLY first_release.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);
ALTER TABLE ONLY first_release.steps
    ADD CONSTRAINT steps_pkey PRIMARY KEY (id);
ALTER TABLE ONLY first_release.workers
    ADD CONSTRAINT workers_pkey PRIMARY KEY (id);
CREATE INDEX ix_artifacts_job_id ON first_release.artifacts USING btree (job_id);
CREATE INDEX ix_events_job_id ON first_release.events USING btree (job_id);
CREATE INDEX ix_jobs_created_at ON first_release.jobs USING btree (created_at);
CREATE INDEX ix_jobs_status ON first_release.jobs USING btree (status);
CREATE INDEX ix_steps_job_id ON first_release.steps USING btree (job_id);
CREATE INDEX ix_workers_heartbeat_at ON first_release.workers USING btree (heartbeat_at);
ALTER TABLE ONLY first_release.artifacts
    ADD CONSTRAINT artifacts_job_id_fkey FOREIGN KEY (job_id) REFERENCES first_release.jobs(id) ON DELETE CASCADE;
ALTER TABLE ONLY first_release.artifacts
    ADD CONSTRAINT artifacts_step_id_fkey FOREIGN KEY (step_id) REFERENCES first_release.steps(id);
ALTER TABLE ONLY first_release.events
    ADD CONSTRAINT events_job_id_fkey FOREIGN KEY (job_id) REFERENCES first_release.jobs(id) ON DELETE CASCADE;
ALTER TABLE ONLY first_release.steps
    ADD CONSTRAINT steps_job_id_fkey FOREIGN KEY (job_id) REFERENCES first_release.jobs(id) ON DELETE CASCADE;
