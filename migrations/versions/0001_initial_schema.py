"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 23:40:03.743607
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
import sqlmodel
import cxr_fhir.records.types


revision: str = '0001'
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:

    op.create_table('api_client',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('token_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('created_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('revoked_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('token_sha256')
    )
    op.create_table('app_user',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('username', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('password_hash', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('display_name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('failed_logins', sa.Integer(), nullable=False),
    sa.Column('locked_until', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_login_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('username')
    )
    op.create_table('audit_event',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('recorded', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=1), nullable=False),
    sa.Column('subtype', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
    sa.Column('agent_type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('agent_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('source_ip', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('entity_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('entity_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('query', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('detail', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_event_agent_id'), ['agent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_event_entity_id'), ['entity_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_event_recorded'), ['recorded'], unique=False)

    op.create_table('patient',
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('created_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('mrn', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('mrn_system', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('family', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('given', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('sex', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('er_area', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('triage_level', sa.Integer(), nullable=True),
    sa.Column('attending_doctor', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('notes', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.create_index('ix_patient_family_given', ['family', 'given'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_mrn'), ['mrn'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_updated_at'), ['updated_at'], unique=False)

    op.create_table('resource_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('operation', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('recorded_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('content', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('resource_type', 'resource_id', 'version_id')
    )
    with op.batch_alter_table('resource_version', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resource_version_recorded_at'), ['recorded_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_resource_version_resource_id'), ['resource_id'], unique=False)

    op.create_table('study',
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('created_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('patient_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('content_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('original_filename', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
    sa.Column('media_type', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('study_uid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('series_uid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('sop_instance_uid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('sop_class_uid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('accession_number', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('modality', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('view_position', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('acquired_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('width', sa.Integer(), nullable=True),
    sa.Column('height', sa.Integer(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('failure_reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('uploaded_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.ForeignKeyConstraint(['patient_id'], ['patient.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_content_sha256'), ['content_sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_study_uid'), ['study_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_updated_at'), ['updated_at'], unique=False)

    op.create_table('analysis',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('study_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('model_name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('model_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('manifest_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('probabilities', sa.JSON(), nullable=False),
    sa.Column('top3', sa.JSON(), nullable=False),
    sa.Column('boxes', sa.JSON(), nullable=False),
    sa.Column('priority', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('heatmap_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('timings_ms', sa.JSON(), nullable=False),
    sa.Column('created_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_analysis_priority'), ['priority'], unique=False)
        batch_op.create_index(batch_op.f('ix_analysis_study_id'), ['study_id'], unique=False)

    op.create_table('report',
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('created_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deleted_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('study_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('analysis_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('conclusion', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('issued', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('confirmed_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('confirmed_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['analysis_id'], ['analysis.id'], ),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_report_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_report_study_id'), ['study_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_report_updated_at'), ['updated_at'], unique=False)

    op.create_table('outbox_delivery',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('report_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('report_version', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('claimed_until', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('ehr_response', sa.JSON(), nullable=True),
    sa.Column('created_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', cxr_fhir.records.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['report_id'], ['report.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outbox_delivery', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_delivery_report_id'), ['report_id'], unique=False)
        batch_op.create_index('ix_outbox_due', ['status', 'next_attempt_at'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('outbox_delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_due')
        batch_op.drop_index(batch_op.f('ix_outbox_delivery_report_id'))

    op.drop_table('outbox_delivery')
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_updated_at'))
        batch_op.drop_index(batch_op.f('ix_report_study_id'))
        batch_op.drop_index(batch_op.f('ix_report_status'))

    op.drop_table('report')
    with op.batch_alter_table('analysis', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_analysis_study_id'))
        batch_op.drop_index(batch_op.f('ix_analysis_priority'))

    op.drop_table('analysis')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_updated_at'))
        batch_op.drop_index(batch_op.f('ix_study_study_uid'))
        batch_op.drop_index(batch_op.f('ix_study_status'))
        batch_op.drop_index(batch_op.f('ix_study_patient_id'))
        batch_op.drop_index(batch_op.f('ix_study_content_sha256'))

    op.drop_table('study')
    with op.batch_alter_table('resource_version', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resource_version_resource_id'))
        batch_op.drop_index(batch_op.f('ix_resource_version_recorded_at'))

    op.drop_table('resource_version')
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_updated_at'))
        batch_op.drop_index(batch_op.f('ix_patient_mrn'))
        batch_op.drop_index('ix_patient_family_given')

    op.drop_table('patient')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_event_recorded'))
        batch_op.drop_index(batch_op.f('ix_audit_event_entity_id'))
        batch_op.drop_index(batch_op.f('ix_audit_event_agent_id'))

    op.drop_table('audit_event')
    op.drop_table('app_user')
    op.drop_table('api_client')

