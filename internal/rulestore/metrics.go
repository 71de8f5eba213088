package rulestore

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the rules store, each with the label store (the store's
// name: a small set the operator chooses, never tenant data), so that
// two stores of one process are told apart and a stale one is seen as
// such (docs/operating.md, "Metrics"). Registered by registerStoreMetrics
// from the handler's Provision; a store's series exist from its opening
// and go when the last store of that name stops.
var (
	storeAccounts = prometheus.NewGaugeVec(prometheus.GaugeOpts(storeOpts("store_accounts",
		"Accounts this server serves from the atomsphere_cors rules store, by store.")), storeLabels)
	storeLastSync = prometheus.NewGaugeVec(prometheus.GaugeOpts(storeOpts("store_last_sync_timestamp_seconds",
		"Unix time of the last successful read of the rules store by this server, by store (0: never).")), storeLabels)
	storeSyncErrors = prometheus.NewCounterVec(prometheus.CounterOpts(storeOpts("store_sync_errors_total",
		"Failed reads (polls) of the rules store, by store.")), storeLabels)
	storeEditSeconds = storeSecondsVec("store_edit_duration_seconds",
		"Time from an admin write to the rules store to its being served by this server, by store.")
	storePollSeconds = storeSecondsVec("store_poll_duration_seconds",
		"Time one poll of the rules store took, by store.")
)

// storeLabels are the labels of every rules store metric.
var storeLabels = []string{"store"}

// storeOpts names a rules store metric: caddy_atomsphere_cors_<name>.
func storeOpts(name, help string) prometheus.Opts {
	return prometheus.Opts{Namespace: "caddy", Subsystem: "atomsphere_cors", Name: name, Help: help}
}

// storeSecondsVec is a rules store histogram of durations in seconds,
// from 1ms to about 16s.
func storeSecondsVec(name, help string) *prometheus.HistogramVec {
	o := storeOpts(name, help)
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: o.Namespace, Subsystem: o.Subsystem, Name: o.Name, Help: o.Help,
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
	}, storeLabels)
}

// Collectors are the rules store's metrics, for a config's registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{storeAccounts, storeLastSync, storeSyncErrors, storeEditSeconds, storePollSeconds}
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
