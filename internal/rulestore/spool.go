package rulestore

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// The import spool: an import's body is validated line by line into a
// file, then written to the store from it, so that a body of any size
// is never held in memory. The files live in a directory of the module's
// own in Caddy's data directory, named after the process that writes
// them; a server killed during an import leaves its file behind, and the
// next server to start on that data directory removes it
// (docs/store.md, "Admin routes").

// spoolDir is the spool directory: atomsphere_cors/import-spool in the
// data directory (Caddy's), next to the stores' snapshots.
func spoolDir(dataDir string) string {
	return filepath.Join(dataDir, "atomsphere_cors", "import-spool")
}

const spoolPrefix = "import-"

// CreateSpool creates a spool file for one import, readable by this
// user alone (it holds tenants' rules).
func CreateSpool(dataDir string) (*os.File, error) {
	cleanSpool.Do(func() { removeStaleSpools(dataDir, zap.NewNop()) })
	dir := spoolDir(dataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return os.CreateTemp(dir, fmt.Sprintf("%s%d-*.ndjson", spoolPrefix, os.Getpid()))
}

var cleanSpool sync.Once

// removeStaleSpools removes the spool files of processes that are no
// longer running (a server killed during an import). A file of a running
// process, such as a server whose data directory a `caddy validate` shares,
// is left alone. It runs once per process, when its first store opens.
// spoolAbandoned is how long a spool file of a live process may go
// unchanged before it is taken for abandoned: longer than any import's
// validation and writes take (minutes at 10^6 accounts).
const spoolAbandoned = 6 * time.Hour

func removeStaleSpools(dataDir string, logger *zap.Logger) {
	dir := spoolDir(dataDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, e := range entries {
		name := e.Name()
		rest, ok := strings.CutPrefix(name, spoolPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			continue
		}
		// A live process's spool is its import in progress, unless it has
		// not changed for spoolAbandoned: then the PID is another
		// process's now, or the server's that wrote it is a zombie.
		if pid != self && processAlive(pid) {
			if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < spoolAbandoned {
				continue
			}
		}
		if err := os.Remove(filepath.Join(dir, name)); err == nil {
			logger.Info("removed the import spool file of a server that stopped during an import", zap.String("file", name))
		}
	}
}
