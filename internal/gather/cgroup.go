package gather

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/caddy-backhand/backhand/internal/logtext"
)

// cgroupMount is where cgroup v2 (the unified hierarchy) is mounted.
const cgroupMount = "/sys/fs/cgroup"

// maxCgroupFile bounds how much of one cgroup file is read. The files read
// here are a few KiB at most (memory.stat); the bound only guards against a
// wrong root pointing somewhere odd.
const maxCgroupFile = 64 << 10

// detectCgroupDir returns the cgroup v2 directory of this process: the mount
// point joined with the path of the "0::" line of /proc/self/cgroup. When that
// directory does not exist, as in a container without a cgroup namespace whose
// own cgroup is mounted at the mount point, it returns the mount point.
func detectCgroupDir() string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return cgroupMount
	}
	p, ok := parseProcSelfCgroup(b)
	if !ok {
		return cgroupMount
	}
	return cgroupDirFor(cgroupMount, p)
}

// parseProcSelfCgroup returns the cgroup v2 path from the contents of
// /proc/self/cgroup, the line "0::/path".
func parseProcSelfCgroup(b []byte) (string, bool) {
	for line := range strings.SplitSeq(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok && strings.HasPrefix(p, "/") {
			return p, true
		}
	}
	return "", false
}

// cgroupDirFor joins mount and the cgroup path p, or returns mount if that
// directory does not exist. p cannot climb above mount.
func cgroupDirFor(mount, p string) string {
	dir := filepath.Join(mount, filepath.Clean("/"+p))
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return dir
	}
	return mount
}

// cgroupFS reads the cgroup v2 interface files of one cgroup directory.
// A missing limit file means no limit (the root cgroup has none); a file that
// exists but cannot be parsed is an error.
type cgroupFS struct {
	fsys fs.FS
}

// cpuLimit reads cpu.max. limited is false for "max" or a missing file.
func (c cgroupFS) cpuLimit() (quota, period uint64, limited bool, err error) {
	b, err := c.read("cpu.max")
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, false, err
	}
	return parseCPUMax(b)
}

// cpuUsageUsec reads usage_usec from cpu.stat: CPU time the cgroup used since
// it was created, in microseconds.
func (c cgroupFS) cpuUsageUsec() (uint64, error) {
	b, err := c.read("cpu.stat")
	if err != nil {
		return 0, err
	}
	return parseKeyedUint(b, "cpu.stat", "usage_usec")
}

// memLimit reads memory.max in bytes. limited is false for "max" or a missing
// file.
func (c cgroupFS) memLimit() (limit uint64, limited bool, err error) {
	b, err := c.read("memory.max")
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	return parseMemoryMax(b)
}

// memWorkingSet returns memory.current minus inactive_file from memory.stat,
// in bytes: what kubelet calls the working set. Inactive page cache can be
// reclaimed under pressure, so it does not count against the limit.
func (c cgroupFS) memWorkingSet() (uint64, error) {
	b, err := c.read("memory.current")
	if err != nil {
		return 0, err
	}
	current, err := parseSingleUint(b, "memory.current")
	if err != nil {
		return 0, err
	}
	if b, err = c.read("memory.stat"); err != nil {
		return 0, err
	}
	inactive, err := parseKeyedUint(b, "memory.stat", "inactive_file")
	if err != nil {
		return 0, err
	}
	return current - min(inactive, current), nil
}

// read returns the contents of one interface file, at most maxCgroupFile
// bytes.
func (c cgroupFS) read(name string) ([]byte, error) {
	if c.fsys == nil {
		return nil, fmt.Errorf("cgroup: reading %s: %w", name, fs.ErrNotExist)
	}
	f, err := c.fsys.Open(name)
	if err != nil {
		return nil, fmt.Errorf("cgroup: reading %s: %w", name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCgroupFile))
	if err != nil {
		return nil, fmt.Errorf("cgroup: reading %s: %w", name, err)
	}
	return b, nil
}

// parseCPUMax parses cpu.max, "$MAX $PERIOD" in microseconds, where $MAX is
// "max" for no limit: "200000 100000" is two CPUs. The period defaults to
// the kernel's 100000 when absent.
func parseCPUMax(b []byte) (quota, period uint64, limited bool, err error) {
	fields := strings.Fields(string(b))
	if len(fields) < 1 || len(fields) > 2 {
		return 0, 0, false, cgroupMalformed("cpu.max", b)
	}
	period = 100000
	if len(fields) == 2 {
		if period, err = strconv.ParseUint(fields[1], 10, 64); err != nil || period == 0 {
			return 0, 0, false, cgroupMalformed("cpu.max", b)
		}
	}
	if fields[0] == "max" {
		return 0, period, false, nil
	}
	if quota, err = strconv.ParseUint(fields[0], 10, 64); err != nil || quota == 0 {
		return 0, 0, false, cgroupMalformed("cpu.max", b)
	}
	return quota, period, true, nil
}

// parseMemoryMax parses memory.max: a number of bytes, or "max" for no limit.
func parseMemoryMax(b []byte) (limit uint64, limited bool, err error) {
	if string(bytes.TrimSpace(b)) == "max" {
		return 0, false, nil
	}
	limit, err = parseSingleUint(b, "memory.max")
	return limit, err == nil, err
}

// parseSingleUint parses a file holding one unsigned number, like
// memory.current.
func parseSingleUint(b []byte, name string) (uint64, error) {
	n, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, cgroupMalformed(name, b)
	}
	return n, nil
}

// parseKeyedUint returns the value of key in a flat keyed file of
// "key value" lines, like cpu.stat and memory.stat.
func parseKeyedUint(b []byte, name, key string) (uint64, error) {
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || k != key {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cgroup: %s: malformed %s line %q", name, key, logtext.Clip(line, 80))
		}
		return n, nil
	}
	return 0, fmt.Errorf("cgroup: %s: no %s line", name, key)
}

// cgroupMalformed is the error for a file whose contents cannot be parsed.
func cgroupMalformed(name string, b []byte) error {
	return fmt.Errorf("cgroup: %s: malformed contents %q", name, logtext.Clip(string(b), 80))
}
