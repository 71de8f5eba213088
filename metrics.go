package atomspherecors

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"atomspherecors/internal/policy"
)

// Metrics. The module's collectors are created once per process and
// registered in the metrics registry of every config that provisions a
// handler, so they appear on Caddy's /metrics next to Caddy's own, and
// keep counting across config reloads (each reload, and each admin API
// edit, has a registry of its own). Labels never carry an account ID or
// an origin: their sets are small and fixed, whatever the config or the
// traffic (docs/operating.md, "Metrics").

// reasonOther counts a denial whose reason a kind cannot have, so that
// every decision is counted under a label of a small, fixed set.
const reasonOther = "other"

// deniedReasons are the reasons of denials that each kind of request can
// have: a preflight always has an Origin; only a preflight has an
// Access-Control-Request-Method. Each is a reason label of the metrics.
var deniedReasons = []struct {
	reason            policy.Reason
	preflight, normal bool
}{
	{policy.NoOrigin, false, true},
	{policy.RepeatedOrigin, true, true},
	{policy.NoRules, true, true},
	{policy.OriginNotAllowed, true, true},
	{policy.MalformedOrigin, true, true},
	{policy.MethodNotAllowed, true, true},
	{policy.RepeatedRequestMethod, true, false},
	{policy.AmbiguousPath, true, true},
	{policy.DeferredHeaders, true, true},
}

// decisions counts decisions, exported as
// caddy_atomsphere_cors_requests_total{kind, outcome, reason}. Counting is
// one atomic add into an array indexed by kind and reason, with no label
// lookup and no interface call on the request path; the labels are put
// together when the metrics are read. A reason a kind cannot have (a
// preflight always has an Origin, only a preflight has an
// Access-Control-Request-Method) is counted as other.
var decisions = &decisionCollector{
	desc: prometheus.NewDesc("caddy_atomsphere_cors_requests_total",
		"Requests on account paths decided by atomsphere_cors, by kind (preflight, normal), "+
			"outcome (allowed, denied) and reason of a denial (empty when allowed).",
		[]string{"kind", "outcome", "reason"}, nil),
}

// decisionCollector is the prometheus.Collector of the decision counts.
type decisionCollector struct {
	desc *prometheus.Desc
	n    [policy.NumKinds][policy.NumReasons]atomic.Uint64
}

// count counts one decision.
func (c *decisionCollector) count(d policy.Decision) { c.n[d.Kind][d.Reason].Add(1) }

func (c *decisionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect sends one series per kind and outcome-and-reason the kind can
// have, zeros included, so that a rate can be taken from the first scrape.
func (c *decisionCollector) Collect(ch chan<- prometheus.Metric) {
	for _, k := range []policy.Kind{policy.Preflight, policy.Normal} {
		n := &c.n[k]
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n[policy.Allowed].Load()), k.String(), "allowed", "")
		var can [policy.NumReasons]bool
		for _, r := range deniedReasons {
			can[r.reason] = k == policy.Preflight && r.preflight || k == policy.Normal && r.normal
		}
		other := uint64(0)
		for r := policy.Allowed + 1; r < policy.NumReasons; r++ {
			if can[r] {
				ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n[r].Load()), k.String(), "denied", r.String())
			} else {
				other += n[r].Load()
			}
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(other), k.String(), "denied", reasonOther)
	}
}

// Metrics of the rules store, each with the label store (the store's
// name: a small set the operator chooses, never tenant data), so that
// two stores of one process are told apart and a stale one is seen as
// such (docs/operating.md, "Metrics"). Registered by registerStoreMetrics
// from the handler's Provision; a store's series exist from its opening
// and go when the last store of that name stops.
var (
	storeAccounts = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "atomsphere_cors", Name: "store_accounts",
		Help: "Accounts this server serves from the atomsphere_cors rules store, by store.",
	}, []string{"store"})
	storeLastSync = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "atomsphere_cors", Name: "store_last_sync_timestamp_seconds",
		Help: "Unix time of the last successful read of the rules store by this server, by store (0: never).",
	}, []string{"store"})
	storeSyncErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "atomsphere_cors", Name: "store_sync_errors_total",
		Help: "Failed reads (polls) of the rules store, by store.",
	}, []string{"store"})
	storeEditSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "atomsphere_cors", Name: "store_edit_duration_seconds",
		Help:    "Time from an admin write to the rules store to its being served by this server, by store.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
	}, []string{"store"})
	storePollSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "atomsphere_cors", Name: "store_poll_duration_seconds",
		Help:    "Time one poll of the rules store took, by store.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
	}, []string{"store"})
)

// registerStoreMetrics registers the rules store's metrics in the
// config's registry; call it from the store's Provision.
func registerStoreMetrics(ctx caddy.Context) error {
	return registerOnce(ctx, storeAccounts, storeLastSync, storeSyncErrors, storeEditSeconds, storePollSeconds)
}

// storeMetricsOpen makes the series of store name exist (at 0: a store
// never read shows a last sync at 0, which a sync-age alert catches).
func storeMetricsOpen(name string) {
	storeAccounts.WithLabelValues(name)
	storeLastSync.WithLabelValues(name)
	storeSyncErrors.WithLabelValues(name)
	storeEditSeconds.WithLabelValues(name)
	storePollSeconds.WithLabelValues(name)
}

// storeMetricsClose removes the series of store name, once no store of
// that name runs in this process.
func storeMetricsClose(name string) {
	storeAccounts.DeleteLabelValues(name)
	storeLastSync.DeleteLabelValues(name)
	storeSyncErrors.DeleteLabelValues(name)
	storeEditSeconds.DeleteLabelValues(name)
	storePollSeconds.DeleteLabelValues(name)
}

// storeLoaded records how many accounts store name serves.
func storeLoaded(name string, accounts int) {
	storeAccounts.WithLabelValues(name).Set(float64(accounts))
}

// storeSynced records the end of a read of store name: its time when it
// succeeded, one more error when it failed.
func storeSynced(name string, at time.Time, err error) {
	if err != nil {
		storeSyncErrors.WithLabelValues(name).Inc()
		return
	}
	storeLastSync.WithLabelValues(name).Set(float64(at.UnixNano()) / 1e9)
}

// storeEdited records how long an edit of store name took to take effect.
func storeEdited(name string, d time.Duration) {
	storeEditSeconds.WithLabelValues(name).Observe(d.Seconds())
}

// storePolled records how long a poll of store name took.
func storePolled(name string, d time.Duration) {
	storePollSeconds.WithLabelValues(name).Observe(d.Seconds())
}

// registerMetrics registers the decision counters in the config's
// registry.
func registerMetrics(ctx caddy.Context) error {
	return registerOnce(ctx, decisions)
}

// registerOnce registers collectors in ctx's registry. Every handler of
// a config provisions with the same registry: a collector registered
// already is not an error.
func registerOnce(ctx caddy.Context, cs ...prometheus.Collector) error {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) && are.ExistingCollector == c {
				continue
			}
			return err
		}
	}
	return nil
}
