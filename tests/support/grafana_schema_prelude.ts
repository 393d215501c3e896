// Prelude of the .ts file tests/test_dashboards.py type-checks with `tsc --noEmit --strict`:
// each generated dashboard is assigned to GrafanaDashboard, Grafana's published Dashboard type
// (npm @grafana/schema, installed by scripts/test.sh), so an unknown key, a missing field or a
// wrong value is a type error.
import type { AnnotationQuery, Dashboard, DataQuery } from "@grafana/schema";

// The dashboard JSON as Grafana stores it: enum-typed fields hold their string values.
type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends Array<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;
// The Prometheus data source's query (its plugin defines it; the schema leaves it open).
interface PrometheusQuery extends DataQuery {
  expr: string;
  interval?: string;
  legendFormat?: string;
}
// The Prometheus data source's own annotation fields (read by its annotation support).
interface PrometheusAnnotation {
  titleFormat?: string;
  textFormat?: string;
  tagKeys?: string;
  useValueForTime?: boolean;
}
type GrafanaDashboard = Json<Omit<Dashboard, "annotations">> & {
  annotations?: { list?: Array<Json<AnnotationQuery<PrometheusQuery>> & PrometheusAnnotation> };
};
