#!/bin/bash

# Parameters
#SBATCH --array=0-0%1
#SBATCH --cpus-per-task=4
#SBATCH --error=/runs/golden/.submitit/STAMP/array0/%A_%a_0_log.err
#SBATCH --gpus-per-node=2
#SBATCH --hold
#SBATCH --job-name=ablate-golden
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --open-mode=append
#SBATCH --output=/runs/golden/.submitit/STAMP/array0/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@90
#SBATCH --time=90
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /runs/golden/.submitit/STAMP/array0/%A_%a_%t_log.out --error /runs/golden/.submitit/STAMP/array0/%A_%a_%t_log.err python -u -m submitit.core._submit FOLDER
