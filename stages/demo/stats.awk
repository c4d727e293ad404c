# Mean, sample standard deviation and count of the ret_1 column.
BEGIN { FS = "," }
NR > 1 { n++; sum += $2; sumsq += $2 * $2 }
END {
    mean = sum / n
    printf "rows=%d\nmean=%.8f\nstd=%.8f\n", n, mean, sqrt((sumsq - n * mean * mean) / (n - 1))
}
