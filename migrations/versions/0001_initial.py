"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 01:12:21.931451

Generated with ``alembic revision --autogenerate`` against schema.models on an empty database, then
reviewed by hand: JSONB's ``astext_type`` needed ``sa.Text`` qualified, boolean server defaults are
``sa.true()``/``sa.false()`` (autogenerate rendered SQLite's ``1``/``0``, which PostgreSQL refuses
for a boolean column), and the downgrade drops tables child-first (their indexes go with them).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=150), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('object_type', sa.String(length=64), nullable=False),
    sa.Column('object_id', sa.String(length=128), nullable=False),
    sa.Column('detail', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_events_object_type_object_id'), ['object_type', 'object_id'], unique=False)

    op.create_table('patients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("key LIKE 'hmac:%' OR key LIKE 'ref:%'", name=op.f('ck_patients_key_prefix')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patients')),
    sa.UniqueConstraint('key', name=op.f('uq_patients_key'))
    )
    op.create_table('population_stats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('embedder', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('stats', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('count >= 0', name=op.f('ck_population_stats_count_nonnegative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_population_stats')),
    sa.UniqueConstraint('embedder', 'model_version', name=op.f('uq_population_stats_embedder_model_version'))
    )
    op.create_table('stream_tokens',
    sa.Column('nonce', sa.String(length=128), nullable=False),
    sa.Column('call_sid', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('nonce', name=op.f('pk_stream_tokens'))
    )
    with op.batch_alter_table('stream_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_stream_tokens_call_sid'), ['call_sid'], unique=False)
        batch_op.create_index(batch_op.f('ix_stream_tokens_expires_at'), ['expires_at'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=150), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('active', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.CheckConstraint("role IN ('nurse', 'admin', 'auditor')", name=op.f('ck_users_role')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('baselines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('embedder', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('stats', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('count >= 0', name=op.f('ck_baselines_count_nonnegative')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_baselines_patient_id_patients'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_baselines')),
    sa.UniqueConstraint('patient_id', 'embedder', 'model_version', name=op.f('uq_baselines_patient_id_embedder_model_version'))
    )
    op.create_table('calls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('call_sid', sa.String(length=64), nullable=False),
    sa.Column('stream_sid', sa.String(length=64), nullable=True),
    sa.Column('patient_id', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('consent', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('call_score', sa.Float(), nullable=True),
    sa.Column('speech_s', sa.Float(), server_default='0', nullable=False),
    sa.Column('stream_status', sa.String(length=16), nullable=True),
    sa.Column('stream_error', sa.Text(), nullable=True),
    sa.Column('evidence', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.CheckConstraint("status IN ('streaming', 'ended', 'finalised', 'error')", name=op.f('ck_calls_status')),
    sa.CheckConstraint("stream_status IS NULL OR stream_status IN ('started', 'stopped', 'error')", name=op.f('ck_calls_stream_status')),
    sa.CheckConstraint("verdict IN ('pending', 'pain_likely', 'no_pain', 'inconclusive')", name=op.f('ck_calls_verdict')),
    sa.CheckConstraint('speech_s >= 0', name=op.f('ck_calls_speech_s_nonnegative')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_calls_patient_id_patients'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calls')),
    sa.UniqueConstraint('call_sid', name=op.f('uq_calls_call_sid'))
    )
    with op.batch_alter_table('calls', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calls_patient_id_started_at'), ['patient_id', 'started_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_calls_started_at'), ['started_at'], unique=False)

    op.create_table('voiceprints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=False),
    sa.Column('embedder', sa.String(length=128), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('count >= 0', name=op.f('ck_voiceprints_count_nonnegative')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_voiceprints_patient_id_patients'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_voiceprints')),
    sa.UniqueConstraint('patient_id', name=op.f('uq_voiceprints_patient_id'))
    )
    op.create_table('flags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('call_id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.Integer(), nullable=True),
    sa.Column('severity', sa.Float(), nullable=False),
    sa.Column('level', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('label', sa.String(length=32), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('raised_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_by', sa.String(length=150), nullable=True),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sa.String(length=150), nullable=True),
    sa.CheckConstraint("label IS NULL OR label IN ('pain_confirmed', 'no_pain', 'unsure')", name=op.f('ck_flags_label')),
    sa.CheckConstraint("status IN ('open', 'acknowledged', 'resolved')", name=op.f('ck_flags_status')),
    sa.ForeignKeyConstraint(['call_id'], ['calls.id'], name=op.f('fk_flags_call_id_calls'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_flags_patient_id_patients'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flags')),
    sa.UniqueConstraint('call_id', name=op.f('uq_flags_call_id'))
    )
    with op.batch_alter_table('flags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flags_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_flags_status_raised_at'), ['status', 'raised_at'], unique=False)

    op.create_table('utterances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('call_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('start_ms', sa.Integer(), nullable=False),
    sa.Column('end_ms', sa.Integer(), nullable=False),
    sa.Column('speech_s', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'scored', 'failed', 'skipped')", name=op.f('ck_utterances_status')),
    sa.CheckConstraint('end_ms >= start_ms', name=op.f('ck_utterances_span_ordered')),
    sa.CheckConstraint('seq >= 0', name=op.f('ck_utterances_seq_nonnegative')),
    sa.CheckConstraint('speech_s >= 0', name=op.f('ck_utterances_speech_s_nonnegative')),
    sa.ForeignKeyConstraint(['call_id'], ['calls.id'], name=op.f('fk_utterances_call_id_calls'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_utterances')),
    sa.UniqueConstraint('call_id', 'seq', name=op.f('uq_utterances_call_id_seq'))
    )
    op.create_table('baseline_contributions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('baseline_id', sa.Integer(), nullable=False),
    sa.Column('utterance_id', sa.Integer(), nullable=True),
    sa.Column('call_id', sa.Integer(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('embedding', sa.LargeBinary(), nullable=False),
    sa.Column('included', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("source IN ('enrolment', 'resolved_call')", name=op.f('ck_baseline_contributions_source')),
    sa.ForeignKeyConstraint(['baseline_id'], ['baselines.id'], name=op.f('fk_baseline_contributions_baseline_id_baselines'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['call_id'], ['calls.id'], name=op.f('fk_baseline_contributions_call_id_calls'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['utterance_id'], ['utterances.id'], name=op.f('fk_baseline_contributions_utterance_id_utterances'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_baseline_contributions')),
    sa.UniqueConstraint('baseline_id', 'utterance_id', name=op.f('uq_baseline_contributions_baseline_id_utterance_id'))
    )
    with op.batch_alter_table('baseline_contributions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_baseline_contributions_call_id'), ['call_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_baseline_contributions_utterance_id'), ['utterance_id'], unique=False)

    op.create_table('scores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('utterance_id', sa.Integer(), nullable=False),
    sa.Column('model_version', sa.String(length=128), nullable=False),
    sa.Column('probability', sa.Float(), nullable=False),
    sa.Column('baseline_applied', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('baseline_n', sa.Integer(), server_default='0', nullable=False),
    sa.Column('speaker_similarity', sa.Float(), nullable=True),
    sa.Column('embedding', sa.LargeBinary(), nullable=False),
    sa.Column('features', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('baseline_n >= 0', name=op.f('ck_scores_baseline_n_nonnegative')),
    sa.CheckConstraint('probability >= 0 AND probability <= 1', name=op.f('ck_scores_probability_range')),
    sa.ForeignKeyConstraint(['utterance_id'], ['utterances.id'], name=op.f('fk_scores_utterance_id_utterances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scores')),
    sa.UniqueConstraint('utterance_id', 'model_version', name=op.f('uq_scores_utterance_id_model_version'))
    )
    op.create_table('utterance_audio',
    sa.Column('utterance_id', sa.Integer(), nullable=False),
    sa.Column('mulaw', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['utterance_id'], ['utterances.id'], name=op.f('fk_utterance_audio_utterance_id_utterances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('utterance_id', name=op.f('pk_utterance_audio'))
    )


def downgrade() -> None:
    for table in (
        "utterance_audio",
        "scores",
        "baseline_contributions",
        "utterances",
        "flags",
        "voiceprints",
        "calls",
        "baselines",
        "api_tokens",
        "users",
        "stream_tokens",
        "population_stats",
        "patients",
        "audit_events",
    ):
        op.drop_table(table)
