package gather

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"testing"
	"testing/fstest"
	"time"

	"github.com/caddy-backhand/backhand/internal/wire"
)

// fakeHost is a host with 4 CPUs, load 1.5 and 8 GiB of memory, 6 GiB
// available, whose CPU times the test advances.
type fakeHost struct {
	times cpuTimes
	err   error
}

func (h *fakeHost) source() hostSource {
	return hostSource{
		loadAvg1:    func() (float64, error) { return 1.5, h.err },
		logicalCPUs: func() (int, error) { return 4, h.err },
		cpuTimes:    func() (cpuTimes, error) { return h.times, h.err },
		memory:      func() (uint64, uint64, error) { return 8 << 30, 6 << 30, h.err },
	}
}

func fakeGatherer(t *testing.T, cgroupRoot string) (*Gatherer, *fakeHost) {
	t.Helper()
	g := New(cgroupRoot)
	h := &fakeHost{times: cpuTimes{idle: 300, total: 1000}}
	g.host = h.source()
	return g, h
}

func TestGatherHost(t *testing.T) {
	for _, root := range []string{"testdata/cgroup/unlimited", "testdata/cgroup/root", "testdata/cgroup/none"} {
		g, h := fakeGatherer(t, root)
		now := time.Unix(1000, 0)
		var f Sample
		if err := g.Sample(now, &f); err != nil {
			t.Fatalf("%s: sample: %v", root, err)
		}
		want := Sample{Load1000: 1500, CPUMilli: 4000, CPUIdle1000: 300, MemTotal: 8 << 30, MemAvail: 6 << 30}
		if f != want {
			t.Errorf("%s: first sample = %+v, want %+v (idle since boot)", root, f, want)
		}
		h.times = cpuTimes{idle: 300 + 90, total: 1000 + 100}
		if err := g.Sample(now.Add(time.Second), &f); err != nil {
			t.Fatal(err)
		}
		if f.CPUIdle1000 != 900 {
			t.Errorf("%s: idle over the interval = %d, want 900", root, f.CPUIdle1000)
		}
		// No tick between calls: the previous share stays.
		if err := g.Sample(now.Add(time.Second), &f); err != nil || f.CPUIdle1000 != 900 {
			t.Errorf("%s: idle without ticks = %d, %v; want 900", root, f.CPUIdle1000, err)
		}
	}
}

func TestGatherCgroupLimited(t *testing.T) {
	g, _ := fakeGatherer(t, "testdata/cgroup/limited")
	var f Sample
	if err := g.Sample(time.Unix(1000, 0), &f); err != nil {
		t.Fatal(err)
	}
	want := Sample{
		Load1000:    0,    // no history yet
		CPUMilli:    2000, // 200000/100000
		CPUIdle1000: 1000, // no history yet
		MemTotal:    1 << 30,
		MemAvail:    1<<30 - (512<<20 - 128<<20),
	}
	if f != want {
		t.Errorf("sample = %+v, want %+v", f, want)
	}
}

func TestGatherCgroupCPUOnly(t *testing.T) {
	g, _ := fakeGatherer(t, "testdata/cgroup/cpuonly")
	var f Sample
	if err := g.Sample(time.Unix(1000, 0), &f); err != nil {
		t.Fatal(err)
	}
	if f.CPUMilli != 1500 || f.MemTotal != 8<<30 || f.MemAvail != 6<<30 {
		t.Errorf("sample = %+v, want CPUs from the cgroup and memory from the host", f)
	}
}

func TestGatherCgroupIdleAndLoad(t *testing.T) {
	g, _ := fakeGatherer(t, "")
	cg := fstest.MapFS{"cpu.max": {Data: []byte("200000 100000\n")}}
	setUsage := func(usec uint64) {
		cg["cpu.stat"] = &fstest.MapFile{Data: fmt.Appendf(nil, "usage_usec %d\nuser_usec 1\n", usec)}
	}
	g.cg = cgroupFS{fsys: cg}
	t0 := time.Unix(1000, 0)
	var f Sample

	setUsage(1e6)
	mustSample(t, g, t0, &f)
	if f.CPUIdle1000 != 1000 || f.Load1000 != 0 || f.CPUMilli != 2000 {
		t.Fatalf("first sample = %+v, want idle 1000, load 0", f)
	}

	// 5 CPU-seconds in 10s: 0.5 of 2 CPUs.
	setUsage(1e6 + 5e6)
	mustSample(t, g, t0.Add(10*time.Second), &f)
	if f.CPUIdle1000 != 750 || f.Load1000 != 500 {
		t.Fatalf("second sample = %+v, want idle 750, load 500 (seeded)", f)
	}

	// Both CPUs busy for 10s: idle 0, load moves toward 2000.
	setUsage(1e6 + 5e6 + 20e6)
	mustSample(t, g, t0.Add(20*time.Second), &f)
	decay := math.Exp(-10.0 / 60)
	wantLoad := uint32(math.Round(1000 * (0.5*decay + 2*(1-decay))))
	if f.CPUIdle1000 != 0 || f.Load1000 != wantLoad {
		t.Fatalf("third sample = %+v, want idle 0, load %d", f, wantLoad)
	}

	// Same instant: nothing changes.
	setUsage(1e6 + 5e6 + 20e6 + 1e6)
	mustSample(t, g, t0.Add(20*time.Second), &f)
	if f.CPUIdle1000 != 0 || f.Load1000 != wantLoad {
		t.Fatalf("same-instant sample = %+v, want unchanged", f)
	}

	// Counter goes back (cgroup recreated): figures kept, new baseline.
	setUsage(0)
	mustSample(t, g, t0.Add(30*time.Second), &f)
	if f.CPUIdle1000 != 0 || f.Load1000 != wantLoad {
		t.Fatalf("after counter reset = %+v, want unchanged", f)
	}
	setUsage(2e6) // 0.2 CPUs over 10s
	mustSample(t, g, t0.Add(40*time.Second), &f)
	if f.CPUIdle1000 != 900 {
		t.Fatalf("after new baseline idle = %d, want 900", f.CPUIdle1000)
	}
}

func mustSample(t *testing.T, g *Gatherer, now time.Time, f *Sample) {
	t.Helper()
	if err := g.Sample(now, f); err != nil {
		t.Fatalf("sample: %v", err)
	}
}

func TestGatherCgroupCappedByHost(t *testing.T) {
	g, _ := fakeGatherer(t, "")
	g.cg = cgroupFS{fsys: fstest.MapFS{
		"cpu.max":        {Data: []byte("800000 100000\n")}, // 8 CPUs on a 4-CPU host
		"cpu.stat":       {Data: []byte("usage_usec 0\n")},
		"memory.max":     {Data: []byte("17179869184\n")}, // 16 GiB on an 8 GiB host
		"memory.current": {Data: []byte("1073741824\n")},
		"memory.stat":    {Data: []byte("inactive_file 0\n")},
	}}
	var f Sample
	mustSample(t, g, time.Unix(1000, 0), &f)
	if f.CPUMilli != 4000 || f.MemTotal != 8<<30 || f.MemAvail != 6<<30 {
		t.Errorf("sample = %+v, want the host's 4 CPUs, 8 GiB, 6 GiB available", f)
	}
}

func TestGatherCgroupMalformed(t *testing.T) {
	g, _ := fakeGatherer(t, "testdata/cgroup/malformed")
	var f Sample
	err := g.Sample(time.Unix(1000, 0), &f)
	if err == nil {
		t.Fatal("sample succeeded on malformed cgroup files")
	}
	// cpu.max and memory.max cannot be parsed: host figures, and the errors.
	want := Sample{Load1000: 1500, CPUMilli: 4000, CPUIdle1000: 300, MemTotal: 8 << 30, MemAvail: 6 << 30}
	if f != want {
		t.Errorf("sample = %+v, want host figures %+v", f, want)
	}
	t.Logf("error: %v", err)
}

func TestGatherCgroupBadStat(t *testing.T) {
	g, _ := fakeGatherer(t, "testdata/cgroup/badstat")
	f := Sample{Load1000: 7, CPUIdle1000: 8, MemAvail: 9}
	if err := g.Sample(time.Unix(1000, 0), &f); err == nil {
		t.Fatal("sample succeeded without usage_usec and inactive_file")
	}
	// The limits are known; what depends on the bad files is left alone.
	want := Sample{Load1000: 7, CPUMilli: 500, CPUIdle1000: 8, MemTotal: 1 << 20, MemAvail: 9}
	if f != want {
		t.Errorf("sample = %+v, want %+v", f, want)
	}
}

func TestGatherHostErrors(t *testing.T) {
	g, h := fakeGatherer(t, "testdata/cgroup/root")
	h.err = errors.New("no /proc")
	f := Sample{Load1000: 1, CPUMilli: 2, CPUIdle1000: 3, MemTotal: 4, MemAvail: 5}
	before := f
	err := g.Sample(time.Unix(1000, 0), &f)
	if err == nil {
		t.Fatal("sample succeeded with a failing host")
	}
	if f != before {
		t.Errorf("sample = %+v, want fields untouched %+v", f, before)
	}
	if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n < 2 {
		t.Errorf("got %d joined errors, want one per failed source: %v", n, err)
	}
}

func TestGatherRecoversPanic(t *testing.T) {
	g, _ := fakeGatherer(t, "testdata/cgroup/root")
	g.host.loadAvg1 = func() (float64, error) { panic("boom") }
	var f Sample
	if err := g.Sample(time.Unix(1000, 0), &f); err == nil {
		t.Fatal("sample returned no error after a panic")
	}
	// The lock was released: the next call does not deadlock.
	g.host.loadAvg1 = func() (float64, error) { return 0, nil }
	if err := g.Sample(time.Unix(1001, 0), &f); err != nil {
		t.Fatal(err)
	}
}

func TestGatherRealHost(t *testing.T) {
	g := New("")
	var f Sample
	err := g.Sample(time.Now(), &f)
	if runtime.GOOS != "linux" {
		t.Skipf("figures on %s: %+v, error %v", runtime.GOOS, f, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if f.CPUMilli == 0 || f.MemTotal == 0 || f.MemAvail > f.MemTotal || f.CPUIdle1000 > 1000 {
		t.Errorf("implausible figures %+v", f)
	}
	time.Sleep(20 * time.Millisecond)
	if err := g.Sample(time.Now(), &f); err != nil {
		t.Fatal(err)
	}
	t.Logf("figures: %+v", f)
}

func TestGatherMilli(t *testing.T) {
	tests := []struct {
		in   float64
		want uint32
	}{
		{0, 0}, {-1, 0}, {math.NaN(), 0}, {0.0004, 0}, {0.0005, 1}, {1.5, 1500},
		{math.Inf(1), math.MaxUint32}, {5e6, math.MaxUint32},
	}
	for _, tt := range tests {
		if got := wire.Milli32(tt.in); got != tt.want {
			t.Errorf("Milli32(%v) = %d, want %d", tt.in, got, tt.want)
		}
	}
	if got := share1000(1.7); got != 1000 {
		t.Errorf("share1000(1.7) = %d, want 1000", got)
	}
	if got := share1000(-0.2); got != 0 {
		t.Errorf("share1000(-0.2) = %d, want 0", got)
	}
}
