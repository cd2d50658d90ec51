BEGIN TRANSACTION;
CREATE TABLE audit_log (
	id INTEGER NOT NULL, 
	created DATETIME NOT NULL, 
	event VARCHAR(32) NOT NULL, 
	result_id INTEGER, 
	model_name VARCHAR(128) NOT NULL, 
	model_version VARCHAR(128) NOT NULL, 
	client VARCHAR(128) NOT NULL, 
	input_sha256 VARCHAR(64) NOT NULL, 
	detail TEXT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "audit_log" VALUES(1,'2026-01-05 09:30:00.000000','result',1,'seed-cnn','abc123def456','local','0000000000000000000000000000000000000000000000000000000000000001','upload: PNEUMONIA');
INSERT INTO "audit_log" VALUES(2,'2026-01-05 09:31:00.000000','result',2,'seed-cnn','abc123def456','local','0000000000000000000000000000000000000000000000000000000000000002','upload: NORMAL');
INSERT INTO "audit_log" VALUES(3,'2026-01-05 09:32:00.000000','result',3,'seed-cnn','abc123def456','local','0000000000000000000000000000000000000000000000000000000000000003','upload: ERROR');
INSERT INTO "audit_log" VALUES(4,'2026-12-06 02:08:32.839384','review',1,'seed-cnn','abc123def456','Dr A','0000000000000000000000000000000000000000000000000000000000000001','agree with a note');
CREATE TABLE dicom_outbox (
	id INTEGER NOT NULL, 
	result_id INTEGER NOT NULL, 
	created DATETIME NOT NULL, 
	kind VARCHAR(8) NOT NULL, 
	sop_class_uid VARCHAR(64) NOT NULL, 
	sop_instance_uid VARCHAR(64), 
	transfer_syntax_uid VARCHAR(64) NOT NULL, 
	data BLOB NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	last_error TEXT NOT NULL, 
	next_attempt DATETIME NOT NULL, 
	last_attempt DATETIME, 
	delivered_at DATETIME, 
	target VARCHAR(128) NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(result_id) REFERENCES worklist_results (id) ON DELETE CASCADE, 
	UNIQUE (sop_instance_uid)
);
CREATE TABLE schema_version (
	version INTEGER NOT NULL, 
	applied_at DATETIME NOT NULL, 
	description VARCHAR(200) NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO "schema_version" VALUES(1,'2026-12-06 02:08:32.809452','created');
INSERT INTO "schema_version" VALUES(2,'2026-12-06 02:08:34.039340','worklist_results.thumbnail: a small preview of each film for the worklist');
INSERT INTO "schema_version" VALUES(3,'2026-12-06 02:08:34.039340','worklist_results.cause, cause_probability, cause_threshold: a flagged film''s bacterial/viral pattern');
INSERT INTO "schema_version" VALUES(4,'2026-12-06 02:08:34.039340','worklist_results.score_calibration: where the answering model''s score was calibrated');
INSERT INTO "schema_version" VALUES(5,'2026-12-06 02:08:34.039340','dicom_outbox: the DICOM node''s SR and SC until the PACS has them; worklist_results.uid_conflict and an index on sop_uid: a SOP Instance UID received again');
INSERT INTO "schema_version" VALUES(6,'2026-12-06 02:08:34.039340','worklist_results.scope_caution: a chest film scored although unlike the training films');
INSERT INTO "schema_version" VALUES(7,'2026-12-06 02:08:34.039340','worklist_results.times_received: the same input sent again is one result with a count');
CREATE TABLE worklist_results (
	id INTEGER NOT NULL, 
	created DATETIME NOT NULL, 
	category SMALLINT NOT NULL, 
	input_sha256 VARCHAR(64) NOT NULL, 
	source VARCHAR(32) NOT NULL, 
	filename_hash VARCHAR(64) NOT NULL, 
	probability FLOAT, 
	decision VARCHAR(32) NOT NULL, 
	threshold FLOAT, 
	in_scope BOOLEAN, 
	scope_reason TEXT NOT NULL, 
	error TEXT NOT NULL, 
	model_name VARCHAR(128) NOT NULL, 
	model_version VARCHAR(128) NOT NULL, 
	client VARCHAR(128) NOT NULL, 
	patient_id VARCHAR(64) NOT NULL, 
	accession VARCHAR(64) NOT NULL, 
	study_date VARCHAR(16) NOT NULL, 
	age VARCHAR(16) NOT NULL, 
	sex VARCHAR(16) NOT NULL, 
	"view" VARCHAR(16) NOT NULL, 
	study_uid VARCHAR(64) NOT NULL, 
	series_uid VARCHAR(64) NOT NULL, 
	sop_uid VARCHAR(64) NOT NULL, thumbnail TEXT NOT NULL DEFAULT '', cause VARCHAR(16) NOT NULL DEFAULT '', cause_probability FLOAT, cause_threshold FLOAT, score_calibration VARCHAR(200) NOT NULL DEFAULT '', uid_conflict BOOLEAN NOT NULL DEFAULT 0, scope_caution VARCHAR(200) NOT NULL DEFAULT '', times_received INTEGER NOT NULL DEFAULT 1, 
	PRIMARY KEY (id)
);
INSERT INTO "worklist_results" VALUES(1,'2026-01-05 09:30:00.000000',0,'0000000000000000000000000000000000000000000000000000000000000001','upload','ffffffffffffffff',0.83,'PNEUMONIA',0.5,1,'','','seed-cnn','abc123def456','local','P-1','ACC-1','20260105','004Y','F','PA','1.2.826.0.1.3680043.2.1','1.2.826.0.1.3680043.2.1.1','1.2.826.0.1.3680043.2.1.1.1','','',NULL,NULL,'',0,'',1);
INSERT INTO "worklist_results" VALUES(2,'2026-01-05 09:31:00.000000',1,'0000000000000000000000000000000000000000000000000000000000000002','upload','ffffffffffffffff',0.12,'NORMAL',0.5,0,'blank or uniform image','','seed-cnn','abc123def456','local','','','','','','','','','','','',NULL,NULL,'',0,'',1);
INSERT INTO "worklist_results" VALUES(3,'2026-01-05 09:32:00.000000',2,'0000000000000000000000000000000000000000000000000000000000000003','upload','ffffffffffffffff',NULL,'ERROR',NULL,NULL,'','not an image: truncated JPEG','seed-cnn','abc123def456','local','','','','','','','','','','','',NULL,NULL,'',0,'',1);
CREATE TABLE worklist_reviews (
	id INTEGER NOT NULL, 
	result_id INTEGER NOT NULL, 
	created DATETIME NOT NULL, 
	verdict VARCHAR(16) NOT NULL, 
	note TEXT NOT NULL, 
	reviewer VARCHAR(128) NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(result_id) REFERENCES worklist_results (id) ON DELETE CASCADE
);
INSERT INTO "worklist_reviews" VALUES(1,1,'2026-12-06 02:08:32.839384','agree','consolidation right lower lobe','Dr A');
CREATE INDEX ix_worklist_results_accession ON worklist_results (accession);
CREATE INDEX ix_worklist_results_order ON worklist_results (category, probability);
CREATE INDEX ix_worklist_results_created ON worklist_results (created);
CREATE INDEX ix_worklist_results_patient_id ON worklist_results (patient_id);
CREATE INDEX ix_worklist_results_input_sha256 ON worklist_results (input_sha256);
CREATE INDEX ix_worklist_results_study_uid ON worklist_results (study_uid);
CREATE INDEX ix_audit_log_created ON audit_log (created);
CREATE INDEX ix_audit_log_result_id ON audit_log (result_id);
CREATE INDEX ix_worklist_reviews_created ON worklist_reviews (created);
CREATE INDEX ix_worklist_reviews_result_id ON worklist_reviews (result_id);
CREATE INDEX ix_dicom_outbox_state ON dicom_outbox (state);
CREATE INDEX ix_dicom_outbox_created ON dicom_outbox (created);
CREATE INDEX ix_dicom_outbox_next_attempt ON dicom_outbox (next_attempt);
CREATE INDEX ix_dicom_outbox_result_id ON dicom_outbox (result_id);
CREATE INDEX ix_worklist_results_sop_uid ON worklist_results (sop_uid);
COMMIT;
