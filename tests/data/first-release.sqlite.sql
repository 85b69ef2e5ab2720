-- A job store made by the first release (M1, commit cdf1d4b): create_all, no alembic_version.
-- Three jobs ran (two succeeded, one failed with model_not_found), one still queued.
BEGIN TRANSACTION;
CREATE TABLE artifacts (
	id INTEGER NOT NULL, 
	job_id VARCHAR(36) NOT NULL, 
	step_id INTEGER, 
	item_index INTEGER NOT NULL, 
	seed BIGINT NOT NULL, 
	width INTEGER NOT NULL, 
	height INTEGER NOT NULL, 
	format VARCHAR(8) NOT NULL, 
	s3_key VARCHAR(512) NOT NULL, 
	size_bytes INTEGER NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE, 
	FOREIGN KEY(step_id) REFERENCES steps (id), 
	UNIQUE (s3_key)
);
INSERT INTO "artifacts" VALUES(1,'e9d12257-14d2-4252-9a17-951829ffc13c',1,0,7,64,64,'png','dreamforge/default/jobs/e9d12257-14d2-4252-9a17-951829ffc13c/generate/20261128T091431Z_0_64x64_7.png',4168,'477a72705ce7bb5e64ada4f2c79e20a10cc2749ddf266066dab9fda184b39241','2026-11-28 09:14:31.951352');
INSERT INTO "artifacts" VALUES(2,'24a910f4-eb4c-47e8-8d5f-8b763af0e87f',2,0,1341218613,64,64,'webp','dreamforge/default/jobs/24a910f4-eb4c-47e8-8d5f-8b763af0e87f/generate/20261128T091433Z_0_64x64_1341218613.webp',1214,'053ef67cc942033c97df09b85b1fe550d4a3f77a6e2027fcf5a3407ea1d9cabb','2026-11-28 09:14:33.890728');
CREATE TABLE events (
	id INTEGER NOT NULL, 
	job_id VARCHAR(36) NOT NULL, 
	at DATETIME NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	payload JSON NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
INSERT INTO "events" VALUES(1,'e9d12257-14d2-4252-9a17-951829ffc13c','2026-11-28 09:14:31.776015','status','{"status": "queued"}');
INSERT INTO "events" VALUES(2,'e9d12257-14d2-4252-9a17-951829ffc13c','2026-11-28 09:14:31.847949','status','{"status": "running", "worker_id": "cli:vm:31756:4ca74a", "attempt": 1}');
INSERT INTO "events" VALUES(3,'e9d12257-14d2-4252-9a17-951829ffc13c','2026-11-28 09:14:31.875204','progress','{"current": 1, "total": 3}');
INSERT INTO "events" VALUES(4,'e9d12257-14d2-4252-9a17-951829ffc13c','2026-11-28 09:14:31.899155','progress','{"current": 2, "total": 3}');
INSERT INTO "events" VALUES(5,'e9d12257-14d2-4252-9a17-951829ffc13c','2026-11-28 09:14:31.923209','progress','{"current": 3, "total": 3}');
INSERT INTO "events" VALUES(6,'e9d12257-14d2-4252-9a17-951829ffc13c','2026-11-28 09:14:31.951352','status','{"status": "succeeded", "s3_key": "dreamforge/default/jobs/e9d12257-14d2-4252-9a17-951829ffc13c/generate/20261128T091431Z_0_64x64_7.png", "timings": {"generate_s": 0.0716, "encode_s": 0.018, "store_s": 0.0076}}');
INSERT INTO "events" VALUES(7,'24a910f4-eb4c-47e8-8d5f-8b763af0e87f','2026-11-28 09:14:33.710919','status','{"status": "queued"}');
INSERT INTO "events" VALUES(8,'24a910f4-eb4c-47e8-8d5f-8b763af0e87f','2026-11-28 09:14:33.785651','status','{"status": "running", "worker_id": "cli:vm:31772:e2b68f", "attempt": 1}');
INSERT INTO "events" VALUES(9,'24a910f4-eb4c-47e8-8d5f-8b763af0e87f','2026-11-28 09:14:33.790330','log','{"message": "seed chosen", "seed": 1341218613}');
INSERT INTO "events" VALUES(10,'24a910f4-eb4c-47e8-8d5f-8b763af0e87f','2026-11-28 09:14:33.816014','progress','{"current": 1, "total": 2}');
INSERT INTO "events" VALUES(11,'24a910f4-eb4c-47e8-8d5f-8b763af0e87f','2026-11-28 09:14:33.839579','progress','{"current": 2, "total": 2}');
INSERT INTO "events" VALUES(12,'24a910f4-eb4c-47e8-8d5f-8b763af0e87f','2026-11-28 09:14:33.890728','status','{"status": "succeeded", "s3_key": "dreamforge/default/jobs/24a910f4-eb4c-47e8-8d5f-8b763af0e87f/generate/20261128T091433Z_0_64x64_1341218613.webp", "timings": {"generate_s": 0.0473, "encode_s": 0.0467, "store_s": 0.0019}}');
INSERT INTO "events" VALUES(13,'fb461d0d-872b-43f0-806d-83e737d84970','2026-11-28 09:14:36.041923','status','{"status": "queued"}');
INSERT INTO "events" VALUES(14,'fb461d0d-872b-43f0-806d-83e737d84970','2026-11-28 09:14:36.150152','status','{"status": "running", "worker_id": "cli:vm:31779:cb3a11", "attempt": 1}');
INSERT INTO "events" VALUES(15,'fb461d0d-872b-43f0-806d-83e737d84970','2026-11-28 09:14:36.160123','log','{"message": "seed chosen", "seed": 894507743}');
INSERT INTO "events" VALUES(16,'fb461d0d-872b-43f0-806d-83e737d84970','2026-11-28 09:14:36.168415','error','{"code": "model_not_found", "message": "no SDXL checkpoint at /nonexistent.safetensors (chosen by DF_GENERATE_MODEL_PATH); put a .safetensors file or a Diffusers folder there, point DF_GENERATE_MODEL_PATH (or DF_MODELS_ROOT + DF_DEFAULT_MODEL_DIR) at one, or set DF_FAKE_RUNNER=1 for the Pillow runner"}');
INSERT INTO "events" VALUES(17,'fb461d0d-872b-43f0-806d-83e737d84970','2026-11-28 09:14:36.168415','status','{"status": "failed", "code": "model_not_found"}');
INSERT INTO "events" VALUES(18,'23f53d8c-ef12-4323-9fc4-db77f5d1728c','2026-11-28 09:14:38.163426','status','{"status": "queued"}');
CREATE TABLE jobs (
	id VARCHAR(36) NOT NULL, 
	type VARCHAR(32) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	params JSON NOT NULL, 
	idempotency_key_hash VARCHAR(64), 
	request_hash VARCHAR(64), 
	correlation_id VARCHAR(255), 
	error_code VARCHAR(64), 
	error_message VARCHAR, 
	error_details JSON, 
	attempts INTEGER NOT NULL, 
	worker_id VARCHAR(255), 
	heartbeat_at DATETIME, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (idempotency_key_hash)
);
INSERT INTO "jobs" VALUES('e9d12257-14d2-4252-9a17-951829ffc13c','generate','succeeded','{"type": "generate", "prompt": "a lighthouse", "negative_prompt": null, "width": 64, "height": 64, "steps": 3, "guidance": 7.0, "seed": 7, "format": "png", "count": 1}',NULL,NULL,NULL,NULL,NULL,NULL,1,'cli:vm:31756:4ca74a',NULL,'2026-11-28 09:14:31.776015','2026-11-28 09:14:31.951352','2026-11-28 09:14:31.847949','2026-11-28 09:14:31.951352');
INSERT INTO "jobs" VALUES('24a910f4-eb4c-47e8-8d5f-8b763af0e87f','generate','succeeded','{"type": "generate", "prompt": "a forest", "negative_prompt": null, "width": 64, "height": 64, "steps": 2, "guidance": 7.0, "seed": 1341218613, "format": "webp", "count": 1}',NULL,NULL,NULL,NULL,NULL,NULL,1,'cli:vm:31772:e2b68f',NULL,'2026-11-28 09:14:33.710919','2026-11-28 09:14:33.890728','2026-11-28 09:14:33.785651','2026-11-28 09:14:33.890728');
INSERT INTO "jobs" VALUES('fb461d0d-872b-43f0-806d-83e737d84970','generate','failed','{"type": "generate", "prompt": "no model", "negative_prompt": null, "width": 64, "height": 64, "steps": 30, "guidance": 7.0, "seed": 894507743, "format": "png", "count": 1}',NULL,NULL,NULL,'model_not_found','no SDXL checkpoint at /nonexistent.safetensors (chosen by DF_GENERATE_MODEL_PATH); put a .safetensors file or a Diffusers folder there, point DF_GENERATE_MODEL_PATH (or DF_MODELS_ROOT + DF_DEFAULT_MODEL_DIR) at one, or set DF_FAKE_RUNNER=1 for the Pillow runner','{"path": "/nonexistent.safetensors", "chosen_by": "DF_GENERATE_MODEL_PATH"}',1,'cli:vm:31779:cb3a11',NULL,'2026-11-28 09:14:36.041923','2026-11-28 09:14:36.168415','2026-11-28 09:14:36.150152','2026-11-28 09:14:36.168415');
INSERT INTO "jobs" VALUES('23f53d8c-ef12-4323-9fc4-db77f5d1728c','generate','queued','{"type": "generate", "prompt": "still queued", "negative_prompt": null, "width": 64, "height": 64, "steps": 30, "guidance": 7.0, "seed": null, "format": "png", "count": 1}',NULL,NULL,NULL,NULL,NULL,NULL,0,NULL,NULL,'2026-11-28 09:14:38.163426','2026-11-28 09:14:38.163426',NULL,NULL);
CREATE TABLE steps (
	id INTEGER NOT NULL, 
	job_id VARCHAR(36) NOT NULL, 
	name VARCHAR(32) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	progress_current INTEGER NOT NULL, 
	progress_total INTEGER NOT NULL, 
	seed BIGINT, 
	started_at DATETIME, 
	finished_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
INSERT INTO "steps" VALUES(1,'e9d12257-14d2-4252-9a17-951829ffc13c','generate','succeeded',3,3,NULL,'2026-11-28 09:14:31.847949','2026-11-28 09:14:31.951352');
INSERT INTO "steps" VALUES(2,'24a910f4-eb4c-47e8-8d5f-8b763af0e87f','generate','succeeded',2,2,1341218613,'2026-11-28 09:14:33.785651','2026-11-28 09:14:33.890728');
INSERT INTO "steps" VALUES(3,'fb461d0d-872b-43f0-806d-83e737d84970','generate','failed',0,30,894507743,'2026-11-28 09:14:36.150152','2026-11-28 09:14:36.168415');
INSERT INTO "steps" VALUES(4,'23f53d8c-ef12-4323-9fc4-db77f5d1728c','generate','queued',0,30,NULL,NULL,NULL);
CREATE TABLE workers (
	id VARCHAR(255) NOT NULL, 
	hostname VARCHAR(255) NOT NULL, 
	pid INTEGER NOT NULL, 
	started_at DATETIME NOT NULL, 
	heartbeat_at DATETIME NOT NULL, 
	stopped_at DATETIME, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_jobs_status ON jobs (status);
CREATE INDEX ix_jobs_created_at ON jobs (created_at);
CREATE INDEX ix_workers_heartbeat_at ON workers (heartbeat_at);
CREATE INDEX ix_steps_job_id ON steps (job_id);
CREATE INDEX ix_events_job_id ON events (job_id);
CREATE INDEX ix_artifacts_job_id ON artifacts (job_id);
COMMIT;
