module goremotecache.local/bench/peakrss

go 1.24
