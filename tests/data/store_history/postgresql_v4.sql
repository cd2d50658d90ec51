--
-- PostgreSQL database dump
--

-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: audit_log; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_log (
    id integer NOT NULL,
    created timestamp without time zone NOT NULL,
    event character varying(32) NOT NULL,
    result_id integer,
    model_name character varying(128) NOT NULL,
    model_version character varying(128) NOT NULL,
    client character varying(128) NOT NULL,
    input_sha256 character varying(64) NOT NULL,
    detail text NOT NULL
);

--
-- Name: audit_log_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.audit_log_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

--
-- Name: audit_log_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.audit_log_id_seq OWNED BY public.audit_log.id;

--
-- Name: schema_version; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_version (
    version integer NOT NULL,
    applied_at timestamp without time zone NOT NULL,
    description character varying(200) NOT NULL
);

--
-- Name: worklist_results; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.worklist_results (
    id integer NOT NULL,
    created timestamp without time zone NOT NULL,
    category smallint NOT NULL,
    input_sha256 character varying(64) NOT NULL,
    source character varying(32) NOT NULL,
    filename_hash character varying(64) NOT NULL,
    probability double precision,
    decision character varying(32) NOT NULL,
    threshold double precision,
    in_scope boolean,
    scope_reason text NOT NULL,
    error text NOT NULL,
    model_name character varying(128) NOT NULL,
    model_version character varying(128) NOT NULL,
    client character varying(128) NOT NULL,
    patient_id character varying(64) NOT NULL,
    accession character varying(64) NOT NULL,
    study_date character varying(16) NOT NULL,
    age character varying(16) NOT NULL,
    sex character varying(16) NOT NULL,
    view character varying(16) NOT NULL,
    study_uid character varying(64) NOT NULL,
    series_uid character varying(64) NOT NULL,
    sop_uid character varying(64) NOT NULL,
    thumbnail text NOT NULL,
    cause character varying(16) NOT NULL,
    cause_probability double precision,
    cause_threshold double precision,
    score_calibration character varying(200) NOT NULL
);

--
-- Name: worklist_results_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.worklist_results_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

--
-- Name: worklist_results_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.worklist_results_id_seq OWNED BY public.worklist_results.id;

--
-- Name: worklist_reviews; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.worklist_reviews (
    id integer NOT NULL,
    result_id integer NOT NULL,
    created timestamp without time zone NOT NULL,
    verdict character varying(16) NOT NULL,
    note text NOT NULL,
    reviewer character varying(128) NOT NULL
);

--
-- Name: worklist_reviews_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.worklist_reviews_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

--
-- Name: worklist_reviews_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.worklist_reviews_id_seq OWNED BY public.worklist_reviews.id;

--
-- Name: audit_log id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_log ALTER COLUMN id SET DEFAULT nextval('public.audit_log_id_seq'::regclass);

--
-- Name: worklist_results id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.worklist_results ALTER COLUMN id SET DEFAULT nextval('public.worklist_results_id_seq'::regclass);

--
-- Name: worklist_reviews id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.worklist_reviews ALTER COLUMN id SET DEFAULT nextval('public.worklist_reviews_id_seq'::regclass);

--
-- Data for Name: audit_log; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.audit_log VALUES (1, '2026-01-05 09:30:00', 'result', 1, 'seed-cnn', 'abc123def456', 'PACS_AE', '0000000000000000000000000000000000000000000000000000000000000001', 'upload: PNEUMONIA');
INSERT INTO public.audit_log VALUES (2, '2026-01-05 09:31:00', 'result', 2, 'seed-cnn', 'abc123def456', 'local', '0000000000000000000000000000000000000000000000000000000000000002', 'upload: OUT_OF_SCOPE');
INSERT INTO public.audit_log VALUES (3, '2026-01-05 09:32:00', 'result', 3, 'seed-cnn', 'abc123def456', 'local', '0000000000000000000000000000000000000000000000000000000000000003', 'upload: not read');
INSERT INTO public.audit_log VALUES (4, '2026-12-06 02:08:25.791082', 'review', 1, 'seed-cnn', 'abc123def456', 'Dr A', '0000000000000000000000000000000000000000000000000000000000000001', 'agree with a note');

--
-- Data for Name: schema_version; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.schema_version VALUES (4, '2026-12-06 02:08:25.71377', 'created');

--
-- Data for Name: worklist_results; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.worklist_results VALUES (1, '2026-01-05 09:30:00', 0, '0000000000000000000000000000000000000000000000000000000000000001', 'upload', '', 0.83, 'PNEUMONIA', 0.5, true, '', '', 'seed-cnn', 'abc123def456', 'PACS_AE', 'P-1', 'ACC-1', '20260105', '004Y', 'F', 'PA', '1.2.826.0.1.3680043.2.1', '1.2.826.0.1.3680043.2.1.1', '1.2.826.0.1.3680043.2.1.1.1', 'data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8U+/=', 'VIRAL', 0.7, 0.4, 'calibrated on the training hospital''s validation films');
INSERT INTO public.worklist_results VALUES (2, '2026-01-05 09:31:00', 1, '0000000000000000000000000000000000000000000000000000000000000002', 'upload', '', 0.12, 'OUT_OF_SCOPE', 0.5, false, 'blank or uniform image', '', 'seed-cnn', 'abc123def456', 'local', '', '', '', '', '', '', '', '', '', '', '', NULL, 0.4, 'calibrated on the training hospital''s validation films');
INSERT INTO public.worklist_results VALUES (3, '2026-01-05 09:32:00', 2, '0000000000000000000000000000000000000000000000000000000000000003', 'upload', '', NULL, '', 0.5, NULL, '', 'not an image: truncated JPEG', 'seed-cnn', 'abc123def456', 'local', '', '', '', '', '', '', '', '', '', '', '', NULL, 0.4, 'calibrated on the training hospital''s validation films');

--
-- Data for Name: worklist_reviews; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.worklist_reviews VALUES (1, 1, '2026-12-06 02:08:25.791082', 'agree', 'consolidation right lower lobe', 'Dr A');

--
-- Name: audit_log_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.audit_log_id_seq', 4, true);

--
-- Name: worklist_results_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.worklist_results_id_seq', 3, true);

--
-- Name: worklist_reviews_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.worklist_reviews_id_seq', 1, true);

--
-- Name: audit_log audit_log_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);

--
-- Name: schema_version schema_version_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.schema_version
    ADD CONSTRAINT schema_version_pkey PRIMARY KEY (version);

--
-- Name: worklist_results worklist_results_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.worklist_results
    ADD CONSTRAINT worklist_results_pkey PRIMARY KEY (id);

--
-- Name: worklist_reviews worklist_reviews_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.worklist_reviews
    ADD CONSTRAINT worklist_reviews_pkey PRIMARY KEY (id);

--
-- Name: ix_audit_log_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_audit_log_created ON public.audit_log USING btree (created);

--
-- Name: ix_audit_log_result_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_audit_log_result_id ON public.audit_log USING btree (result_id);

--
-- Name: ix_worklist_results_accession; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_worklist_results_accession ON public.worklist_results USING btree (accession);

--
-- Name: ix_worklist_results_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_worklist_results_created ON public.worklist_results USING btree (created);

--
-- Name: ix_worklist_results_input_sha256; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_worklist_results_input_sha256 ON public.worklist_results USING btree (input_sha256);

--
-- Name: ix_worklist_results_order; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_worklist_results_order ON public.worklist_results USING btree (category, probability);

--
-- Name: ix_worklist_results_patient_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_worklist_results_patient_id ON public.worklist_results USING btree (patient_id);

--
-- Name: ix_worklist_results_study_uid; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_worklist_results_study_uid ON public.worklist_results USING btree (study_uid);

--
-- Name: ix_worklist_reviews_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_worklist_reviews_created ON public.worklist_reviews USING btree (created);

--
-- Name: ix_worklist_reviews_result_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_worklist_reviews_result_id ON public.worklist_reviews USING btree (result_id);

--
-- Name: worklist_reviews worklist_reviews_result_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.worklist_reviews
    ADD CONSTRAINT worklist_reviews_result_id_fkey FOREIGN KEY (result_id) REFERENCES public.worklist_results(id) ON DELETE CASCADE;

--
-- PostgreSQL database dump complete
--


