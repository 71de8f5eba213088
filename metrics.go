package atomspherecors

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics. The module's collectors are created once per process and
// registered in the metrics registry of every config that provisions a
// handler, so they appear on Caddy's /metrics next to Caddy's own, and
// keep counting across config reloads (each reload, and each admin API
// edit, has a registry of its own). Labels never carry an account ID or
// an origin: their sets are small and fixed, whatever the config or the
// traffic (docs/operating.md, "Metrics").

// Label values of the kind label.
const (
	kindPreflight = "preflight"
	kindNormal    = "normal"
)

// The reasons of denials, as the debug log, the access log and the
// metrics name them.
const (
	reasonNoOrigin          = "no Origin header"
	reasonRepeatedOrigin    = "repeated Origin header"
	reasonNoRules           = "account has no rules"
	reasonOriginNotAllowed  = "origin not allowed"
	reasonMalformedOrigin   = "malformed Origin header"
	reasonMethodNotAllowed  = "method not allowed"
	reasonRepeatedReqMethod = "repeated Access-Control-Request-Method header"
	reasonAmbiguousPath     = "ambiguous path"
	// reasonDeferred is the reason of a request refused because a header
	// handler before this one defers Access-Control-* operations.
	reasonDeferred = "deferred Access-Control-* header operations"
	// reasonOther counts a denial whose reason is none of
	// decisionReasons, so that a reason added later is counted before it
	// gets its own value.
	reasonOther = "other"
)

// decisionReasons are the reasons of denials, as the debug log names
// them, and for each whether a preflight or a normal request can have
// it (a preflight always has an Origin; only a preflight has an
// Access-Control-Request-Method).
var decisionReasons = []struct {
	reason            string
	preflight, normal bool
}{
	{reasonNoOrigin, false, true},
	{reasonRepeatedOrigin, true, true},
	{reasonNoRules, true, true},
	{reasonOriginNotAllowed, true, true},
	{reasonMalformedOrigin, true, true},
	{reasonMethodNotAllowed, true, true},
	{reasonRepeatedReqMethod, true, false},
	{reasonAmbiguousPath, true, true},
	{reasonDeferred, true, true},
	{reasonOther, true, true},
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
	n    [numKinds][numReasons]atomic.Uint64
}

// count counts one decision.
func (c *decisionCollector) count(d Decision) { c.n[d.Kind][d.Reason].Add(1) }

func (c *decisionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect sends one series per kind and outcome-and-reason the kind can
// have, zeros included, so that a rate can be taken from the first scrape.
func (c *decisionCollector) Collect(ch chan<- prometheus.Metric) {
	for _, k := range []Kind{Preflight, Normal} {
		allowed := c.n[k][Allowed].Load()
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(allowed), k.String(), "allowed", "")
		other := uint64(0)
		can := map[string]bool{}
		for _, r := range decisionReasons {
			if k == Preflight && r.preflight || k == Normal && r.normal {
				can[r.reason] = true
			}
		}
		byLabel := map[string]uint64{}
		for r := Allowed + 1; r < numReasons; r++ {
			if label := r.String(); can[label] {
				byLabel[label] += c.n[k][r].Load()
			} else {
				other += c.n[k][r].Load()
			}
		}
		for _, r := range decisionReasons {
			if !can[r.reason] {
				continue
			}
			v := byLabel[r.reason]
			if r.reason == reasonOther {
				v += other
			}
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), k.String(), "denied", r.reason)
		}
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
