package wire

import "math"

// Figures are one node's resources as it announces them to its peers: the
// fields of mod_backhand's serverstat record, plus what a modern balancer
// needs (capacity, latency, draining, application-reported load).
//
// Fixed-point fields keep mod_backhand's convention of values x1000 so the
// wire format carries no floats.
type Figures struct {
	// Load1000 is the one-minute load average x1000 (mod_backhand's load).
	// Inside a cgroup v2 with a CPU quota, it is a one-minute EWMA of the CPUs
	// the cgroup used, since the host's load average says nothing about it.
	Load1000 uint32

	// CPUMilli is the number of CPUs x1000: the host's logical CPUs, or the
	// cgroup v2 CPU quota (cpu.max), which may be fractional.
	CPUMilli uint32

	// CPUIdle1000 is the share of CPU time that was idle over the last
	// interval, x1000 (1000 = idle). Relative to the cgroup's quota inside a
	// limited cgroup.
	CPUIdle1000 uint16

	// MemTotal and MemAvail are total and available memory in bytes, or the
	// cgroup's memory.max and what is left of it.
	MemTotal uint64
	MemAvail uint64

	// Busy is the number of requests this node is serving right now, and
	// Capacity how many it can serve at once (configured). Available is
	// Capacity - Busy, as mod_backhand's aservers.
	Busy     uint32
	Capacity uint32

	// LatencyMicros is an EWMA of this node's response time, in microseconds.
	LatencyMicros uint32

	// Forwarded is how many requests this node has forwarded to peers since
	// it started (mod_backhand's numbacked).
	Forwarded uint64

	// Speed is the node's configured speed rating (mod_backhand's
	// "arriba"): 1000 is a reference core, 0 none.
	Speed uint32

	// Draining is set while the node wants no new requests.
	Draining bool

	// AppWeight is the weight the local application reported, 0-1000
	// (1000 = full weight), when HasAppWeight is set.
	AppWeight    uint16
	HasAppWeight bool

	// AppLoad1000 is the load the local application reported x1000, when
	// HasAppLoad is set.
	AppLoad1000 uint32
	HasAppLoad  bool
}

// Milli32 returns x*1000 rounded, the fixed point of the figures counted in
// thousandths (Load1000, CPUMilli ...), clamped to the range of uint32;
// NaN and negative values give 0.
func Milli32(x float64) uint32 {
	m := math.Round(x * 1000)
	switch {
	case !(m > 0):
		return 0
	case m >= math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(m)
}
