// Package gather samples a node's operating system figures for its
// announcements: load, CPUs, CPU idle share and memory, from the host or,
// inside a cgroup v2 that limits them, from the cgroup. It is the only part
// of the plugin that reads the operating system's figures, so that the rest
// does not depend on gopsutil.
package gather

import (
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"time"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/load"
	"github.com/shirou/gopsutil/v4/mem"

	"github.com/caddy-backhand/backhand/internal/wire"
)

// Sample is one sample of the operating system's figures. The fields have
// the meaning, and the x1000 fixed-point convention, of the announced
// figures' fields of the same names, which the announcer copies them into.
type Sample struct {
	// Load1000 is the one-minute load average x1000, or inside a cgroup
	// with a CPU quota a one-minute EWMA of the CPUs the cgroup used.
	Load1000 uint32

	// CPUMilli is the number of CPUs x1000: the host's logical CPUs, or the
	// cgroup's CPU quota capped at them.
	CPUMilli uint32

	// CPUIdle1000 is the share of CPU time that was idle since the previous
	// sample, x1000 (1000 = idle).
	CPUIdle1000 uint16

	// MemTotal and MemAvail are total and available memory in bytes, or the
	// cgroup's memory limit and what is left of it.
	MemTotal uint64
	MemAvail uint64
}

// Gatherer samples this machine's (or its cgroup's) figures, once per
// announcement interval. It keeps what the next sample needs (the previous
// CPU times), so one Gatherer serves one node. It is safe for concurrent
// use.
//
// CPU and memory are each taken from the cgroup v2 when it sets a limit for
// them (cpu.max, memory.max), and from the host otherwise, because inside a
// limited container the host's figures describe resources the node cannot
// use.
//
// Host CPU idle is the share of idle and iowait time between two calls
// (iowait counts as idle: the CPU was free to run something). The first call
// has no previous sample and reports the share since boot. Inside a cgroup
// with a CPU quota, the first call reports idle 1000 and load 0, since a
// cgroup's usage counter says nothing about the rate until it has been read
// twice.
//
// Sources that fail leave their fields of the Sample as they were.
type Gatherer struct {
	cg   cgroupFS
	host hostSource

	mu sync.Mutex

	// Host CPU times at the previous call, for the idle share.
	hostPrev     cpuTimes
	hostPrevOK   bool
	hostLastIdle uint16

	// cgroup CPU usage at the previous call, and the figures derived from it.
	cgPrevUsage uint64
	cgPrevAt    time.Time
	cgPrevOK    bool
	cgLoad      float64 // one-minute EWMA of CPUs used
	cgLoadOK    bool
	cgLastIdle  uint16
}

// cpuTimes are cumulative CPU times over all CPUs, in seconds.
type cpuTimes struct {
	idle, total float64
}

// hostSource reads the host's figures. It is a set of functions so that tests
// can replace the operating system.
type hostSource struct {
	loadAvg1    func() (float64, error)
	logicalCPUs func() (int, error)
	cpuTimes    func() (cpuTimes, error)
	memory      func() (total, avail uint64, err error)
}

// New returns a Gatherer reading the cgroup v2 directory cgroupRoot, or
// this process's own cgroup when cgroupRoot is "" (see detectCgroupDir).
// A directory without the cgroup's interface files means no limits: the
// host's figures.
func New(cgroupRoot string) *Gatherer {
	if cgroupRoot == "" {
		cgroupRoot = detectCgroupDir()
	}
	return &Gatherer{
		cg:           cgroupFS{fsys: os.DirFS(cgroupRoot)},
		host:         gopsutilHost(),
		hostLastIdle: 1000,
		cgLastIdle:   1000,
	}
}

// gopsutilHost reads the host's figures with gopsutil.
func gopsutilHost() hostSource {
	return hostSource{
		loadAvg1: func() (float64, error) {
			a, err := load.Avg()
			if err != nil {
				return 0, err
			}
			return a.Load1, nil
		},
		logicalCPUs: func() (int, error) { return cpu.Counts(true) },
		cpuTimes:    hostCPUTimes,
		memory: func() (uint64, uint64, error) {
			v, err := mem.VirtualMemory()
			if err != nil {
				return 0, 0, err
			}
			return v.Total, v.Available, nil
		},
	}
}

// hostCPUTimes sums the host's CPU times. Guest time is left out because
// Linux already counts it in user time.
func hostCPUTimes() (cpuTimes, error) {
	ts, err := cpu.Times(false)
	if err != nil {
		return cpuTimes{}, err
	}
	if len(ts) == 0 {
		return cpuTimes{}, errors.New("no CPU times")
	}
	t := ts[0]
	idle := t.Idle + t.Iowait
	return cpuTimes{
		idle:  idle,
		total: idle + t.User + t.System + t.Nice + t.Irq + t.Softirq + t.Steal,
	}, nil
}

// Sample fills s with the figures at time now. It fills what it can and returns the errors of the
// sources that failed, joined. It never panics: a panic in a source library
// is returned as an error, since a figure is not worth the server.
func (g *Gatherer) Sample(now time.Time, s *Sample) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errors.Join(err, fmt.Errorf("gather: panic: %v", r))
		}
	}()
	g.mu.Lock()
	defer g.mu.Unlock()
	return errors.Join(g.sampleCPU(now, s), g.sampleMemory(s))
}

// sampleCPU fills the CPU figures from the cgroup if it has a CPU quota, else
// from the host. A cpu.max that cannot be read falls back to the host.
func (g *Gatherer) sampleCPU(now time.Time, f *Sample) error {
	quota, period, limited, err := g.cg.cpuLimit()
	if err != nil || !limited {
		return errors.Join(err, g.sampleHostCPU(f))
	}
	return g.sampleCgroupCPU(now, quota, period, f)
}

// sampleHostCPU fills the CPU figures from the host.
func (g *Gatherer) sampleHostCPU(f *Sample) error {
	var errs []error
	if l, err := g.host.loadAvg1(); err != nil {
		errs = append(errs, fmt.Errorf("gather: load average: %w", err))
	} else {
		f.Load1000 = wire.Milli32(l)
	}
	if n, err := g.logicalCPUs(); err != nil {
		errs = append(errs, err)
	} else {
		f.CPUMilli = wire.Milli32(float64(n))
	}
	if idle, err := g.hostIdle(); err != nil {
		errs = append(errs, err)
	} else {
		f.CPUIdle1000 = idle
	}
	return errors.Join(errs...)
}

// logicalCPUs is the host's number of logical CPUs, an error if none.
func (g *Gatherer) logicalCPUs() (int, error) {
	n, err := g.host.logicalCPUs()
	if err != nil {
		return 0, fmt.Errorf("gather: CPU count: %w", err)
	}
	if n <= 0 {
		return 0, fmt.Errorf("gather: CPU count: %d", n)
	}
	return n, nil
}

// hostIdle returns the idle share x1000 since the previous call, or since
// boot on the first call. When no time passed between calls it returns the
// previous share.
func (g *Gatherer) hostIdle() (uint16, error) {
	t, err := g.host.cpuTimes()
	if err != nil {
		return 0, fmt.Errorf("gather: CPU times: %w", err)
	}
	prev := cpuTimes{}
	if g.hostPrevOK {
		prev = g.hostPrev
	}
	g.hostPrev, g.hostPrevOK = t, true
	total, idle := t.total-prev.total, t.idle-prev.idle
	if total > 0 {
		g.hostLastIdle = share1000(idle / total)
	}
	return g.hostLastIdle, nil
}

// sampleCgroupCPU fills the CPU figures from a cgroup with a quota. The
// quota is capped at the host's CPUs, since a quota above them cannot be used.
func (g *Gatherer) sampleCgroupCPU(now time.Time, quota, period uint64, f *Sample) error {
	cpus := float64(quota) / float64(period)
	var errs []error
	if n, err := g.logicalCPUs(); err != nil {
		errs = append(errs, err)
	} else {
		cpus = min(cpus, float64(n))
	}
	f.CPUMilli = wire.Milli32(cpus)
	usage, err := g.cg.cpuUsageUsec()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	g.updateCgroupCPU(now, usage, cpus)
	f.Load1000 = wire.Milli32(g.cgLoad)
	f.CPUIdle1000 = g.cgLastIdle
	return errors.Join(errs...)
}

// updateCgroupCPU derives the CPUs used since the previous call from the
// usage counter (microseconds), and from them the idle share of cpus and the
// load: a one-minute EWMA of CPUs used, decayed by exp(-dt/60s) as the
// kernel's load average is. The EWMA starts at the first rate measured, not
// at 0, so that a restarted node does not look idle for a minute.
func (g *Gatherer) updateCgroupCPU(now time.Time, usage uint64, cpus float64) {
	dt := now.Sub(g.cgPrevAt)
	switch {
	case g.cgPrevOK && dt == 0:
		// No time passed: keep the figures and the baseline.
		return
	case !g.cgPrevOK || dt < 0 || usage < g.cgPrevUsage:
		// First call, or the clock or the counter went back (the cgroup
		// was recreated): only take a new baseline.
		g.cgPrevUsage, g.cgPrevAt, g.cgPrevOK = usage, now, true
		return
	}
	used := float64(usage-g.cgPrevUsage) / 1e6 / dt.Seconds()
	g.cgPrevUsage, g.cgPrevAt = usage, now
	g.cgLastIdle = share1000(1 - used/cpus)
	if !g.cgLoadOK {
		g.cgLoad, g.cgLoadOK = used, true
		return
	}
	decay := math.Exp(-dt.Seconds() / 60)
	g.cgLoad = g.cgLoad*decay + used*(1-decay)
}

// sampleMemory fills the memory figures from the cgroup if it has a memory
// limit, else from the host. A memory.max that cannot be read falls back to
// the host.
func (g *Gatherer) sampleMemory(f *Sample) error {
	limit, limited, err := g.cg.memLimit()
	if err != nil || !limited {
		return errors.Join(err, g.sampleHostMemory(f))
	}
	return g.sampleCgroupMemory(limit, f)
}

// sampleHostMemory fills the memory figures from the host.
func (g *Gatherer) sampleHostMemory(f *Sample) error {
	total, avail, err := g.host.memory()
	if err != nil {
		return fmt.Errorf("gather: memory: %w", err)
	}
	f.MemTotal, f.MemAvail = total, avail
	return nil
}

// sampleCgroupMemory fills the memory figures from a cgroup with a memory
// limit: the limit, less the working set. Both are capped by what the host
// has, since a limit above the host's memory, or memory the host's other
// tenants hold, cannot be used; when the host cannot be read, the cgroup's
// figures stand alone.
func (g *Gatherer) sampleCgroupMemory(limit uint64, f *Sample) error {
	hostTotal, hostAvail, hostErr := g.host.memory()
	if hostErr != nil || hostTotal == 0 {
		hostTotal, hostAvail = math.MaxUint64, math.MaxUint64
	}
	if hostErr != nil {
		hostErr = fmt.Errorf("gather: memory: %w", hostErr)
	}
	f.MemTotal = min(limit, hostTotal)
	ws, err := g.cg.memWorkingSet()
	if err != nil {
		return errors.Join(err, hostErr)
	}
	f.MemAvail = min(limit-min(ws, limit), hostAvail)
	return hostErr
}

// share1000 returns the share s (0-1) x1000, rounded and clamped to
// [0, 1000]; NaN gives 0.
func share1000(s float64) uint16 {
	return uint16(min(wire.Milli32(s), 1000))
}
