//go:build !unix

package rulestore

import "os"

// processAlive reports whether process pid may exist: where this cannot
// be told apart, the file is kept.
func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	_ = p.Release()
	return true
}
