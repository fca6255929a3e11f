//! [`MeshCodec`]: meshq's plan nodes as they travel to a worker — the scan
//! mark with its policy token and the policy barrier — and
//! [`udf_travels`], which says which functions may travel.
//!
//! A stage holding a node this codec cannot send, or a function that may
//! not travel, runs on the coordinator (see [`crate::coordinator`]).

use std::sync::Arc;

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::PhysicalExprNode;
use meshq_connectors::{MeshScanExec, ScanToken};
use meshq_engine::policy::barrier::PolicyBarrierExec;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::join_filters::JoinFilterExportExec;

/// A node as it travels.
#[derive(Debug, Serialize, Deserialize)]
enum Node {
    Scan {
        table: String,
        token: Option<Token>,
        /// An Iceberg scan read by field id: its identity-partition
        /// source ids; the adapter is made again here.
        #[serde(default)]
        field_ids: Option<Vec<i32>>,
        /// The dynamic filters the scan applies, each a datafusion-proto
        /// expression carrying its id, so that decoding links it again to
        /// the join of the same stage that completes it.
        #[serde(default)]
        dynamic_filters: Vec<Vec<u8>>,
        /// Ids of those filters that a join of the stage above sends to
        /// the worker ([`crate::join_filters`]): the scan waits for them.
        #[serde(default)]
        remote_filters: Vec<u64>,
    },
    Barrier {
        table: String,
        token: Token,
    },
    /// A shuffle or coalesce below a hash join whose filter is sent to
    /// the stage below ([`JoinFilterExportExec`]).
    JoinFilterExport {
        /// The join's dynamic filter, a datafusion-proto expression
        /// carrying its id (decoding links it to the join again).
        filter: Vec<u8>,
        /// The join's probe-side schema, a datafusion-proto schema.
        probe_schema: Vec<u8>,
    },
}

/// A [`ScanToken`] as it travels.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Token {
    mesh_version: u64,
    principal: u64,
    policies: u64,
}

impl From<ScanToken> for Token {
    fn from(t: ScanToken) -> Self {
        Self {
            mesh_version: t.mesh_version,
            principal: t.principal,
            policies: t.policies,
        }
    }
}

impl From<Token> for ScanToken {
    fn from(t: Token) -> Self {
        Self {
            mesh_version: t.mesh_version,
            principal: t.principal,
            policies: t.policies,
        }
    }
}

/// Whether `udf` may run on a worker: DataFusion's built-ins, as a
/// worker's registry has them, and meshq's masks, which the worker
/// registers from the statement's list ([`crate::travel`]).
/// datafusion-distributed 4.0 puts its own codec first, so a function
/// always travels by name alone; meshq's bounded functions go by a
/// built-in's name and a worker would decode them unbounded. A stage that
/// calls any other function runs on the coordinator.
pub fn udf_travels(udf: &ScalarUDF) -> bool {
    static BUILT_IN: std::sync::LazyLock<datafusion::execution::SessionState> =
        std::sync::LazyLock::new(|| {
            datafusion::execution::SessionStateBuilder::new()
                .with_default_features()
                .build()
        });
    if crate::travel::TravellingMask::of(udf).is_some() {
        return true;
    }
    let inner = udf.inner().as_ref() as &dyn std::any::Any;
    if meshq_engine::functions::is_bounded(udf) || MESHQ_FUNCTIONS.contains(&udf.name()) {
        return false;
    }
    // Only what a worker decodes to the very same function: a built-in
    // of the same name and the same implementation.
    BUILT_IN
        .scalar_functions()
        .get(udf.name())
        .is_some_and(|b| (b.inner().as_ref() as &dyn std::any::Any).type_id() == inner.type_id())
}

/// Names of meshq functions that must never be decoded by name alone.
const MESHQ_FUNCTIONS: [&str; 4] = ["mask_hash", "mask_partial", "mask_redact", "mask_round"];

/// The codec of meshq's plan nodes.
#[derive(Debug, Default)]
pub struct MeshCodec;

/// `plan` with every file scan in it reading by Iceberg field id, with the
/// adapter of these identity-partition source ids (datafusion-proto does
/// not carry a scan's adapter; the Iceberg scan's is made again from the
/// ids its scan mark carries).
fn read_by_field_id(
    plan: Arc<dyn ExecutionPlan>,
    identity_sources: &[i32],
) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::datasource::physical_plan::{FileScanConfig, FileScanConfigBuilder};
    use datafusion::datasource::source::DataSourceExec;
    let factory = Arc::new(meshq_connectors::iceberg::FieldIdAdapterFactory::new(
        identity_sources.iter().copied().collect(),
    ));
    plan.transform_up(|node| {
        let Some(config) = node.downcast_ref::<DataSourceExec>().and_then(|scan| {
            (scan.data_source().as_ref() as &dyn std::any::Any).downcast_ref::<FileScanConfig>()
        }) else {
            return Ok(Transformed::no(node));
        };
        let config = FileScanConfigBuilder::from(config.clone())
            .with_expr_adapter(Some(Arc::clone(&factory) as _))
            .build();
        Ok(Transformed::yes(
            DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
        ))
    })
    .map(|t| t.data)
}

fn codec_error(what: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("meshq plan codec: {what}"))
}

impl PhysicalExtensionCodec for MeshCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node: Node = serde_json::from_slice(buf).map_err(codec_error)?;
        let [input] = inputs else {
            return Err(codec_error("a meshq node has exactly one input"));
        };
        let input = Arc::clone(input);
        Ok(match node {
            Node::Scan {
                table,
                token,
                field_ids,
                dynamic_filters,
                remote_filters,
            } => {
                let input = match &field_ids {
                    Some(ids) => read_by_field_id(input, ids)?,
                    None => input,
                };
                // A scan with policies for its principal sits under a
                // barrier that lets no filter through: one that carries
                // filters was not made by a coordinator.
                if !dynamic_filters.is_empty() && token.is_some_and(|t| t.policies != 0) {
                    return Err(codec_error(format!(
                        "the scan of {table} has policies and carries dynamic filters"
                    )));
                }
                // Through the converter the whole stage is decoded with,
                // which hands out one filter per id. The filters were
                // encoded before the plan ran (a join's placeholder, or
                // columns and literals): meshq's codec is all they need.
                let decode = PhysicalPlanDecodeContext::new(ctx, self);
                let schema = input.schema();
                let filters = dynamic_filters
                    .iter()
                    .map(|bytes| {
                        let node =
                            PhysicalExprNode::decode(bytes.as_slice()).map_err(codec_error)?;
                        proto_converter.proto_to_physical_expr(&node, &schema, &decode)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let scan = MeshScanExec::new(table, input)
                    .with_field_ids(field_ids)
                    .with_dynamic_filters(filters)?
                    .with_remote_filters(&remote_filters);
                Arc::new(match token {
                    Some(t) => scan.with_token(t.into()),
                    None => scan,
                })
            }
            Node::Barrier { table, token } => {
                Arc::new(PolicyBarrierExec::new(table, token.into(), input))
            }
            Node::JoinFilterExport {
                filter,
                probe_schema,
            } => {
                let schema = datafusion_proto::protobuf::Schema::decode(probe_schema.as_slice())
                    .map_err(codec_error)?;
                let schema = Arc::new(
                    datafusion::arrow::datatypes::Schema::try_from(&schema).map_err(codec_error)?,
                );
                let decode = PhysicalPlanDecodeContext::new(ctx, self);
                let node = PhysicalExprNode::decode(filter.as_slice()).map_err(codec_error)?;
                let filter = proto_converter.proto_to_physical_expr(&node, &schema, &decode)?;
                if !filter.is::<datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr>()
                {
                    return Err(codec_error("a join filter export without a dynamic filter"));
                }
                Arc::new(JoinFilterExportExec::new(input, filter, schema))
            }
        })
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let n = if let Some(scan) = node.downcast_ref::<MeshScanExec>() {
            Node::Scan {
                table: scan.table().to_string(),
                token: scan.token().map(|t| Token::from(*t)),
                field_ids: scan.field_ids().map(<[i32]>::to_vec),
                dynamic_filters: scan
                    .dynamic_filters()
                    .iter()
                    .map(|f| {
                        proto_converter
                            .physical_expr_to_proto(f, self)
                            .map(|node| node.encode_to_vec())
                    })
                    .collect::<Result<_>>()?,
                remote_filters: scan.remote_filters().to_vec(),
            }
        } else if let Some(export) = node.downcast_ref::<JoinFilterExportExec>() {
            Node::JoinFilterExport {
                filter: proto_converter
                    .physical_expr_to_proto(export.filter(), self)?
                    .encode_to_vec(),
                probe_schema: datafusion_proto::protobuf::Schema::try_from(
                    export.probe_schema().as_ref(),
                )
                .map_err(codec_error)?
                .encode_to_vec(),
            }
        } else if let Some(barrier) = node.downcast_ref::<PolicyBarrierExec>() {
            Node::Barrier {
                table: barrier.table().to_string(),
                token: (*barrier.token()).into(),
            }
        } else {
            return Err(codec_error(format!("{} cannot be sent", node.name())));
        };
        serde_json::to_writer(buf, &n).map_err(codec_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::physical_plan::{
        FileScanConfig, FileScanConfigBuilder, ParquetSource,
    };
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::execution::object_store::ObjectStoreUrl;
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    fn adapter_of(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
        let scan = plan.downcast_ref::<DataSourceExec>()?;
        let config =
            (scan.data_source().as_ref() as &dyn std::any::Any).downcast_ref::<FileScanConfig>()?;
        config
            .expr_adapter_factory
            .as_ref()
            .map(|f| format!("{f:?}"))
    }

    /// A stage holding a hash join and, below it, a scan mark with that
    /// join's filter, encoded and decoded as a worker does (one
    /// deduplicating converter for the whole plan): the decoded scan's
    /// filter is the decoded join's, so what the join builds reaches the
    /// scan.
    #[test]
    fn a_decoded_scans_filter_is_its_decoded_joins() {
        use datafusion::common::{JoinType, NullEquality};
        use datafusion::physical_expr::PhysicalExpr;
        use datafusion::physical_expr::expressions::{DynamicFilterPhysicalExpr, col, lit};
        use datafusion::physical_plan::joins::{HashJoinExec, HashJoinExecBuilder, PartitionMode};
        use datafusion_proto::bytes::{
            physical_plan_from_bytes_with_proto_converter,
            physical_plan_to_bytes_with_proto_converter,
        };
        use datafusion_proto::physical_plan::DeduplicatingProtoConverter;

        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
        let bare = || {
            DataSourceExec::from_data_source(
                FileScanConfigBuilder::new(
                    ObjectStoreUrl::local_filesystem(),
                    Arc::new(ParquetSource::new(Arc::clone(&schema))),
                )
                .build(),
            ) as Arc<dyn ExecutionPlan>
        };
        let a = col("a", &schema).unwrap();
        let filter = Arc::new(DynamicFilterPhysicalExpr::new(
            vec![Arc::clone(&a)],
            lit(true),
        ));
        let scan = MeshScanExec::new("sales.orders", bare())
            .with_token(ScanToken {
                mesh_version: 1,
                principal: 2,
                policies: 0,
            })
            .with_dynamic_filters(vec![Arc::clone(&filter) as Arc<dyn PhysicalExpr>])
            .unwrap();
        let join: Arc<dyn ExecutionPlan> = Arc::new(
            HashJoinExecBuilder::new(
                bare(),
                Arc::new(scan),
                vec![(Arc::clone(&a), Arc::clone(&a))],
                JoinType::Inner,
            )
            .with_partition_mode(PartitionMode::CollectLeft)
            .with_null_equality(NullEquality::NullEqualsNothing)
            .build()
            .unwrap()
            .with_dynamic_filter_expr(Arc::clone(&filter))
            .unwrap(),
        );
        let ctx = TaskContext::default();
        let bytes = physical_plan_to_bytes_with_proto_converter(
            join,
            &MeshCodec,
            &DeduplicatingProtoConverter {},
        )
        .unwrap();
        let decoded = physical_plan_from_bytes_with_proto_converter(
            &bytes,
            &ctx,
            &MeshCodec,
            &DeduplicatingProtoConverter {},
        )
        .unwrap();
        let join = decoded.downcast_ref::<HashJoinExec>().unwrap();
        let produced = join.dynamic_expressions_produced();
        let produced = produced[0]
            .downcast_ref::<DynamicFilterPhysicalExpr>()
            .unwrap();
        let scan = join.children()[1].downcast_ref::<MeshScanExec>().unwrap();
        let taken = scan.dynamic_filters()[0]
            .downcast_ref::<DynamicFilterPhysicalExpr>()
            .unwrap();
        assert_eq!(
            scan.dynamic_filters()[0].expression_id(),
            filter.expression_id()
        );
        // The join completes its filter; the scan sees it.
        produced.update(lit(false)).unwrap();
        produced.mark_complete();
        assert_eq!(taken.current().unwrap().to_string(), "false");
    }

    /// A scan with policies for its principal never carries dynamic
    /// filters (its barrier lets none through): a worker refuses one that
    /// does, and takes the same filter on a scan without policies.
    #[test]
    fn a_scan_with_policies_and_dynamic_filters_is_refused() {
        use datafusion::physical_expr::PhysicalExpr;
        use datafusion::physical_expr::expressions::{DynamicFilterPhysicalExpr, col, lit};

        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
        let bare = DataSourceExec::from_data_source(
            FileScanConfigBuilder::new(
                ObjectStoreUrl::local_filesystem(),
                Arc::new(ParquetSource::new(Arc::clone(&schema))),
            )
            .build(),
        ) as Arc<dyn ExecutionPlan>;
        let filter: Arc<dyn PhysicalExpr> = Arc::new(DynamicFilterPhysicalExpr::new(
            vec![col("a", &schema).unwrap()],
            lit(true),
        ));
        let ctx = TaskContext::default();
        for (policies, refused) in [(7, true), (0, false)] {
            let token = ScanToken {
                mesh_version: 1,
                principal: 2,
                policies,
            };
            let mark = MeshScanExec::new("sales.orders", Arc::clone(&bare))
                .with_token(token)
                .with_dynamic_filters(vec![Arc::clone(&filter)])
                .unwrap();
            let mut buf = Vec::new();
            MeshCodec
                .try_encode(Arc::new(mark), &mut buf, &DefaultPhysicalProtoConverter {})
                .unwrap();
            let decoded = MeshCodec.try_decode(
                &buf,
                &[Arc::clone(&bare)],
                &ctx,
                &DefaultPhysicalProtoConverter {},
            );
            match decoded {
                Err(e) => {
                    assert!(refused, "{e}");
                    assert!(e.to_string().contains("carries dynamic filters"), "{e}");
                }
                Ok(plan) => {
                    assert!(!refused, "a scan with policies took dynamic filters");
                    let scan = plan.downcast_ref::<MeshScanExec>().unwrap();
                    assert_eq!(scan.dynamic_filters().len(), 1);
                    assert_eq!(
                        scan.dynamic_filters()[0].expression_id(),
                        filter.expression_id(),
                        "the filter keeps its id"
                    );
                }
            }
        }
    }

    /// What a worker receives: the scan mark with the identity ids, over
    /// a file scan whose adapter datafusion-proto dropped. The decoded
    /// scan reads by field id again; a mark without ids leaves it alone.
    #[test]
    fn an_iceberg_scan_mark_makes_its_field_id_adapter_again() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
        let bare = DataSourceExec::from_data_source(
            FileScanConfigBuilder::new(
                ObjectStoreUrl::local_filesystem(),
                Arc::new(ParquetSource::new(schema)),
            )
            .build(),
        ) as Arc<dyn ExecutionPlan>;
        let ctx = TaskContext::default();
        for (ids, expected) in [
            (Some(vec![3, 1]), Some("FieldIdAdapterFactory")),
            (None, None),
        ] {
            let mark = Arc::new(
                MeshScanExec::new("logistics.shipments", Arc::clone(&bare))
                    .with_field_ids(ids.clone()),
            );
            let mut buf = Vec::new();
            MeshCodec
                .try_encode(mark, &mut buf, &DefaultPhysicalProtoConverter {})
                .unwrap();
            let decoded = MeshCodec
                .try_decode(
                    &buf,
                    &[Arc::clone(&bare)],
                    &ctx,
                    &DefaultPhysicalProtoConverter {},
                )
                .unwrap();
            let scan = decoded.downcast_ref::<MeshScanExec>().unwrap();
            assert_eq!(scan.field_ids(), ids.as_deref());
            let adapter = adapter_of(scan.input());
            assert_eq!(
                adapter.as_deref().map(|a| a.split(' ').next().unwrap()),
                expected
            );
            if let Some(a) = adapter {
                assert!(a.contains('1') && a.contains('3'), "{a}");
            }
        }
    }
}
