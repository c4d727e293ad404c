# Writes a deterministic random-walk price series: open_time_ms,close.
# Params (awk -v): rows, seed, start_ms, step_ms.
BEGIN {
    srand(seed); price = 100.0
    print "open_time,close"
    for (i = 0; i < rows; i++) {
        price = price * (1 + (rand() - 0.5) * 0.02)
        printf "%d,%.6f\n", start_ms + i * step_ms, price
    }
}
